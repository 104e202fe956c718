#!/usr/bin/env bash
# Cost per latent with the embedded model on this machine: explain (40 examples of 32 tokens) and
# each scorer (50 activating + 25 random + 25 hard-negative examples), then detection again by
# parsing generated answers (10 excerpts per prompt) on the same latents and examples; last, a
# judge check: the statistical explanations of the same latents (they name the exact tokens)
# judged the same way, to tell a weak explainer from a weak judge.
# Usage: bash bench/interp_cost.sh [N_LATENTS]   (CACHE: a latent cache made by `saelab cache`)
# Prints seconds per latent per stage (the `seconds` of each record); writes $OUT/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8}
T=${THREADS:-2}
CACHE=${CACHE:-${SAELAB_CACHE:-.cache}/runs/interp_cache}
OUT=${OUT:-runs/interp_cost}
DICT=${DICT:-model.layers.6-topk-k32}
rm -rf "$OUT"
saelab explain "$CACHE" --dictionary "$DICT" --n-latents "$N" --batch-latents 4 --threads "$T" --out "$OUT/logprob"
saelab score "$OUT/logprob" --scorers detection fuzzing embedding surprisal intervention --judge-mode logprob --threads "$T"
mkdir -p "$OUT/generate"
cp "$OUT/logprob/"{manifest.json,explanations.jsonl,examples.jsonl} "$OUT/generate/"
saelab score "$OUT/generate" --scorers detection --judge-mode generate --threads "$T"
saelab report "$OUT/logprob" "$OUT/generate" --out "$OUT/report" > /dev/null
LAT=$(python -c "import json; print(' '.join(str(json.loads(l)['latent']) for l in open('$OUT/logprob/explanations.jsonl')))")
saelab explain "$CACHE" --dictionary "$DICT" --latents $LAT --explainer stats --threads "$T" --out "$OUT/stats"
saelab score "$OUT/stats" --scorers detection fuzzing embedding --judge-mode logprob --threads "$T"
saelab report "$OUT/stats" "$OUT/logprob" --out "$OUT/report_stats_vs_llm" | grep -E "^\| (stats|logprob) \| (detection|fuzzing|embedding) .*\| auc \|"
python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
def secs(path):
    rs = [json.loads(l) for l in open(path)]
    rs = [r for r in rs if r.get("status", "ok") == "ok" and r.get("seconds")]
    return statistics.mean(r["seconds"] for r in rs), len(rs)
rows = [("explain (LLM, 40 examples)", out / "logprob/explanations.jsonl")]
rows += [(f"{s} (logprob)" if s in ("detection", "fuzzing") else s, out / f"logprob/scores_{s}.jsonl")
         for s in ("detection", "fuzzing", "embedding", "surprisal", "intervention")]
rows.append(("detection (generate, 10 per prompt)", out / "generate/scores_detection.jsonl"))
print("| stage | seconds per latent | latents |\n|---|---|---|")
for name, p in rows:
    m, n = secs(p)
    print(f"| {name} | {m:.1f} | {n} |")
PY
