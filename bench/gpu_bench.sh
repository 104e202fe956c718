#!/usr/bin/env bash
# Issue 14's GPU numbers in under 3 minutes on one NVIDIA H200: training tok/s, the bare forward
# tok/s at the same settings (LM batch 65,536 tokens) and their ratio, for the embedded SmolLM2
# at model.layers.6 (TopK 4,608 latents, k=32, SAE batch 4,096), at float32 and bfloat16.
# Target (docs/research/scale.md): >= 1M tok/s training in bfloat16 and >= 0.8x the bare forward.
# COMPILE=1 (default) then trains once more per dtype with --compile (torch.compile of the dictionary
# step), after the plain runs; OUT/gpu_bench.json is written after each run, so a deadline cut keeps
# the plain numbers. COMPILE=0 skips it.
# Usage: bash bench/gpu_bench.sh                 (TOKENS=2097152 LIMIT_S=170 OUT=/tmp/saelab_gpu_bench COMPILE=1)
#        DEVICE=cpu TOKENS=16384 LM_BATCH=8192 BUFFER=2 bash bench/gpu_bench.sh   (smoke test on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/saelab_gpu_bench}
mkdir -p "$OUT"
# dequantise the embedded model and tokenise the corpus first (once; not part of any timing)
python -c "
from saelab.models import load_model; from saelab.data import load_token_rows
lm = load_model('embedded'); load_token_rows('builtin', lm.tokenizer, 256, vocab_size=lm.model.config.vocab_size)"
timeout "${LIMIT_S:-170}" python bench/gpu_bench.py --device "${DEVICE:-cuda}" --tokens "${TOKENS:-2097152}" \
  --lm-batch-tokens "${LM_BATCH:-65536}" --buffer-batches "${BUFFER:-64}" --out "$OUT" \
  $([ "${COMPILE:-1}" = 1 ] && echo --compile) 2>"$OUT/stderr.log" \
  || { echo "gpu_bench failed or ran out of time; see $OUT/stderr.log (what it measured: $OUT/gpu_bench.json)"; tail -20 "$OUT/stderr.log"; exit 1; }
