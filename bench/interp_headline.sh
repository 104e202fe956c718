#!/usr/bin/env bash
# The headline comparison on the embedded model: SAE latents vs MLP neurons of the same layer,
# explained and scored. Usage: bash bench/interp_headline.sh [N_LATENTS] [N_LLM_LATENTS]
# SCORE_EX="--n-score-activating 30 --n-score-random 15 --n-score-hard 15" sets the scoring examples
# per latent (defaults: 50 + 25 + 25). Writes runs under $SAELAB_CACHE/runs/interp/ and the comparison reports there.
# Assumes an SAE trained by the core at $SAE (default below) and builds the cache if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export SAELAB_CACHE=${SAELAB_CACHE:-$PWD/.cache}
N=${1:-200}
NLLM=${2:-20}
T=${THREADS:-1}
SAE=${SAE:-$SAELAB_CACHE/runs/interp_sae/model.layers.6-topk-k32}
CACHE=${CACHE:-$SAELAB_CACHE/runs/interp_cache}
OUT=$SAELAB_CACHE/runs/interp
EX=${SCORE_EX:-}
NEUR="neurons:model.layers.6.mlp.down_proj:input"
SAEN=$(basename "$SAE")
[ -f "$SAE/cfg.json" ] || saelab train --tokens 200000 --latents 2304 --k 32 --threads "$T" --out "$(dirname "$SAE")"
[ -f "$CACHE/manifest.json" ] && grep -q '"complete": true' "$CACHE/manifest.json" || \
  saelab cache "$SAE" --neurons model.layers.6.mlp.down_proj:input --neuron-k 32 --tokens 204800 --threads "$T" --out "$CACHE"

# A. statistical explainer (no LLM) + the judge-free embedding scorer, N latents each
for d in sae neurons; do
  name=$([ $d = sae ] && echo "$SAEN" || echo "$NEUR")
  saelab explain "$CACHE" --dictionary "$name" --explainer stats --n-latents "$N" $EX --out "$OUT/${d}_stats" --label "${d}-stats" --threads "$T"
  saelab score "$OUT/${d}_stats" --scorers embedding --threads "$T"
done
saelab report "$OUT/sae_stats" "$OUT/neurons_stats" --out "$OUT/report_stats"

# B. SmolLM2-135M-Instruct explains (20 examples of 32 tokens) and judges (log-probabilities)
for d in sae neurons; do
  name=$([ $d = sae ] && echo "$SAEN" || echo "$NEUR")
  saelab explain "$CACHE" --dictionary "$name" --explainer llm --n-latents "$NLLM" --n-explain 20 $EX --out "$OUT/${d}_llm" \
    --label "${d}-smollm2" --threads "$T"
  saelab score "$OUT/${d}_llm" --scorers embedding detection fuzzing --threads "$T"
done
saelab report "$OUT/sae_llm" "$OUT/neurons_llm" --out "$OUT/report_llm"

# C. the same SAE latents judged by parsing generated answers (10 excerpts per prompt) instead of
#    log-probabilities: a copy of the run, so the two modes are compared on identical examples
rm -rf "$OUT/sae_llm_generate" && mkdir -p "$OUT/sae_llm_generate"
cp "$OUT/sae_llm/manifest.json" "$OUT/sae_llm/explanations.jsonl" "$OUT/sae_llm_generate/"
FIRST=$(python -c "import json,sys; r=[json.loads(l) for l in open('$OUT/sae_llm/explanations.jsonl')]; print(' '.join([str(x['latent']) for x in r if x['status']=='ok'][:${NGEN:-3}]))")
saelab score "$OUT/sae_llm_generate" --scorers detection --judge-mode generate --latents $FIRST --threads "$T"
saelab report "$OUT/sae_llm" "$OUT/sae_llm_generate" --out "$OUT/report_logprob_vs_generate"
