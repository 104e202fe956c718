#!/usr/bin/env bash
# Set up, then train a TopK SAE on SmolLM2-135M-Instruct's residual stream after block 6 on the
# built-in offline corpus, evaluate it on held-out tokens, and print where everything is.
# Override the budget with TOKENS=... (default 500,000: about 5 minutes of training on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export SAELAB_CACHE=${SAELAB_CACHE:-$PWD/.cache}
OUT=${OUT:-runs/quickstart}
saelab train --hookpoints model.layers.6 --arch topk --dict-size 4608 --k 32 --tokens "${TOKENS:-500000}" \
  --out "$OUT" --overwrite
saelab eval "$OUT"/model.layers.6-topk-k32 --tokens "${EVAL_TOKENS:-50000}" --ce-tokens "${CE_TOKENS:-8192}" --overwrite
echo
echo "SAE folder: $OUT/model.layers.6-topk-k32 (cfg.json, sae_weights.safetensors, metrics.json, metrics_density.png)"
echo "Run manifest: $OUT/manifest.json"
