#!/usr/bin/env bash
# The KL+MSE fine-tune measurement of docs/research/e2e.md ("KL+MSE fine-tuning"): for each shared baseline
# dictionary (TopK 4608, k = 32, 1M local tokens), fine-tune with `--init-from ... --loss kl+mse`
# on 5% extra tokens, then evaluate before and after on the same held-out tokens (`saelab eval`,
# results in $OUT/<name>.before.json / .after.json). Prints the wall time of each fine-tune.
# Usage: OUT=runs/finetune TOKENS=50000 THREADS=2 bash bench/finetune_numbers.sh [SAE_DIR ...]
# (default SAE_DIRs: the k = 32 folders of .cache/shared/l6_topk_1m and .cache/shared/l15_topk_*)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/finetune}
TOKENS=${TOKENS:-50000}
LR=${LR:-}   # empty: the kl+mse default (a tenth of the scratch rate)
T=${THREADS:-2}
EVAL=${EVAL:-"--tokens 50000 --ce-tokens 8192"}
DIRS=("$@")
[ ${#DIRS[@]} -gt 0 ] || DIRS=(.cache/shared/l6_topk_1m/*k32* .cache/shared/l15_topk_*/*k32*)
mkdir -p "$OUT"
for src in "${DIRS[@]}"; do
  name=$(basename "$(dirname "$src")")
  t0=$SECONDS
  saelab train --init-from "$src" --loss kl+mse --tokens "$TOKENS" --batch-tokens 1024 ${LR:+--lr $LR} \
    --threads "$T" --out "$OUT/$name" --overwrite
  echo "$name: fine-tune wall $((SECONDS - t0)) s"
  ft=$(ls -d "$OUT/$name"/*/ | head -1)
  # shellcheck disable=SC2086
  # same held-out tokens for both; --out keeps the shared baseline folder untouched
  saelab eval "$src" $EVAL --threads "$T" --out "$OUT/$name.before.json" --overwrite
  saelab eval "$ft" $EVAL --threads "$T" --out "$OUT/$name.after.json" --overwrite
done
