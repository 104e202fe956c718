#!/usr/bin/env bash
# Issue 30's measurements (docs/research/eval.md, "Issue 30: the same question with its noise"), in order:
#  1. the bench with its noise on one 1M-token layer-6 TopK SAE against neurons and the residual basis;
#  2. the steering benchmark on it; 3. scorer validity on its real latents (stats explanations);
#  4. the 3-seed study: 3 seeds x {topk, batchtopk, matryoshka} from one activation cache, seed stability
#     (`saelab seeds`) and seed groups (`saelab bench` over the 9 folders).
# Usage: SAE=runs/base_1m/model.layers.6-topk-k32 OUT=runs/trust THREADS=1 bash bench/trust_numbers.sh [STEP...]
#   steps: bench steering validity seeds (default: all). Wall times are printed by each command.
set -euo pipefail
cd "$(dirname "$0")/.."
SAE=${SAE:?the 1M-token layer-6 TopK SAE folder (saelab train --hookpoints model.layers.6 --tokens 1000000)}
OUT=${OUT:-runs/trust}
T=${THREADS:-1}
STEPS=${*:-bench steering validity seeds}
mkdir -p "$OUT"
for step in $STEPS; do case $step in
bench)
  saelab bench "$SAE" --out "$OUT/bench" --baselines neurons residual --threads "$T" --overwrite ;;
steering)
  saelab bench "$SAE" --out "$OUT/steering" --metrics steering --threads "$T" --overwrite ;;
validity)
  saelab cache "$SAE" --tokens 204800 --out "$OUT/cache" --threads "$T"
  saelab explain "$OUT/cache" --explainer stats --n-latents 80 --out "$OUT/interp" --threads "$T"
  saelab score "$OUT/interp" --scorers embedding --validity --threads "$T"
  first24=$(python -c "import json,sys; print(','.join(str(json.loads(l)['latent']) for l in list(open(sys.argv[1]))[:24]))" "$OUT/interp/explanations.jsonl")
  saelab score "$OUT/interp" --scorers surprisal --validity --latents "$first24" --threads "$T"  # ~100 s per latent
  saelab report "$OUT/interp" --overwrite ;;
seeds)
  saelab cache-activations --out "$OUT/acts" --hookpoints model.layers.6 --tokens 1000000 --threads 2
  for s in 0 1 2; do for a in topk batchtopk matryoshka; do
    [ -f "$OUT/$a-seed$s/manifest.json" ] || saelab train --from-activations "$OUT/acts" --arch "$a" --k 32 \
      --latents 4608 --tokens 1000000 --seed "$s" --out "$OUT/$a-seed$s" --threads "$T"
  done; done
  saelab seeds "$OUT"/{topk,batchtopk,matryoshka}-seed{0,1,2}/model.layers.6-* --out "$OUT/seeds" --threads "$T" --overwrite
  saelab bench "$OUT"/{topk,batchtopk,matryoshka}-seed{0,1,2}/model.layers.6-* --out "$OUT/bench_seeds" \
    --ce-tokens 8192 --threads "$T" --overwrite ;;
*) echo "unknown step $step (bench steering validity seeds)" >&2; exit 2 ;;
esac; done
