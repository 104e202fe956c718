#!/usr/bin/env bash
# Two long measurements side by side on one GPU, each under one deadline (partial results stay
# usable: sweeps and interpretation runs resume where they stopped):
#  A. the e2e reproduction sweep (docs/research/e2e.md) at 1M training tokens per SAE: local, e2e, e2e+ds
#     at model.layers.15, TopK 2304 latents, k 16/32/64, evaluated on the host CPU;
#  B. the autointerp headline (docs/research/interpret.md): an SAE trained on the GPU at model.layers.6,
#     a latent cache with the MLP neurons of the same layer, 200 SAE latents and 200 neurons
#     explained and judged (detection, fuzzing) by the embedded SmolLM2 on the GPU.
# Usage: OUTDIR=runs/gpu LIMIT_S=420 THREADS=8 bash bench/gpu_runs.sh
# The embedding scorer (MiniLM) runs afterwards anywhere: runs carry their examples.
set -uo pipefail
cd "$(dirname "$0")/.."
SL=${SAELAB:-saelab}
W=${OUTDIR:-runs/gpu}
T=${THREADS:-8}
N=${N_LATENTS:-200}
END=$((SECONDS + ${LIMIT_S:-420}))
left() { echo $((END - SECONDS > 5 ? END - SECONDS : 5)); }
mkdir -p "$W"
# dequantise the embedded model and tokenise the corpus once, before the two jobs share them
python -c "
from saelab.models import load_model; from saelab.data import load_token_rows
lm = load_model('embedded'); r = load_token_rows('builtin', lm.tokenizer, 256, vocab_size=lm.model.config.vocab_size)
print('corpus rows', r.tokens.shape)"

(
  timeout "$(left)" $SL sweep --out "$W/e2e_sweep_l15_1m" --model embedded --corpus builtin --hookpoints model.layers.15 \
    --dict-size 2304 --k 16 32 64 --tokens 1000000 --batch-tokens 2048 --context 256 --lr 3e-3 --device cuda \
    --threads "$T" --checkpoint-every 250000 --losses local e2e e2e+ds --eval-tokens 32768 --eval-ce-tokens 8192
  echo "sweep exit $?"
  $SL pareto "$W/e2e_sweep_l15_1m" --out "$W/e2e_pareto_1m"
) > "$W/sweep.log" 2>&1 &

(
  SAE="$W/interp_sae/model.layers.6-topk-k32"
  NEUR="neurons:model.layers.6.mlp.down_proj:input"
  timeout "$(left)" $SL train --model embedded --corpus builtin --hookpoints model.layers.6 --dict-size 2304 --k 32 \
    --tokens 1000000 --device cuda --threads "$T" --out "$W/interp_sae"
  timeout "$(left)" $SL cache "$SAE" --neurons model.layers.6.mlp.down_proj:input --neuron-k 32 --tokens 204800 \
    --threads "$T" --out "$W/interp_cache"
  timeout "$(left)" $SL explain "$W/interp_cache" --dictionary model.layers.6-topk-k32 --n-latents "$N" \
    --batch-latents 16 --batch-size 64 --device cuda --out "$W/sae_llm" --label sae-smollm2
  timeout "$(left)" $SL explain "$W/interp_cache" --dictionary "$NEUR" --n-latents "$N" \
    --batch-latents 16 --batch-size 64 --device cuda --out "$W/neurons_llm" --label neurons-smollm2
  timeout "$(left)" $SL score "$W/sae_llm" --scorers detection fuzzing --batch-size 64 --device cuda
  timeout "$(left)" $SL score "$W/neurons_llm" --scorers detection fuzzing --batch-size 64 --device cuda
  echo "interp done"
) > "$W/interp.log" 2>&1 &
wait
echo "both jobs ended after ${SECONDS}s"
