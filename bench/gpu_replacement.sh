#!/usr/bin/env bash
# Issue 28 on a lent GPU: a per-layer transcoder set and a cross-layer transcoder over all 30 MLPs of
# the embedded SmolLM2, trained in bfloat16 on one GPU, next to the bare full forward at the same LM
# batch (bench/replacement_throughput.py: tok/s, ratio, peak RSS and GPU memory per run).
# Usage: bash bench/gpu_replacement.sh   (TOKENS=4194304 LATENTS=4096 K=16 LIMIT_S=480 OUT=/tmp/saelab_gpu_repl)
#        DEVICE=cpu DTYPE=float32 TOKENS=16384 LATENTS=256 LM_BATCH=4096 bash bench/gpu_replacement.sh  (CPU smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/saelab_gpu_repl}
mkdir -p "$OUT"
# dequantise the embedded model and tokenise the corpus first (once; not part of any timing)
python -c "
from saelab.models import load_model; from saelab.data import load_token_rows
lm = load_model('embedded'); load_token_rows('builtin', lm.tokenizer, 256, vocab_size=lm.model.config.vocab_size)"
timeout "${LIMIT_S:-480}" python bench/replacement_throughput.py --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" \
  --tokens "${TOKENS:-4194304}" --dict-size "${LATENTS:-4096}" --k "${K:-16}" \
  --lm-batch-tokens "${LM_BATCH:-65536}" --forward-tokens "${FWD_TOKENS:-262144}" --out "$OUT" 2>"$OUT/stderr.log" \
  || { echo "replacement bench failed or ran out of time; see $OUT/stderr.log"; tail -20 "$OUT/stderr.log"; exit 1; }
