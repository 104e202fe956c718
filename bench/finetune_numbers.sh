#!/usr/bin/env bash
# The KL+MSE fine-tune measurement of docs/E2E.md ("What a fine-tune buys, by baseline budget"): for each
# baseline dictionary, fine-tune with the documented command (`--init-from ... --loss kl+mse`, 5% of the
# baseline's tokens, every other option at its default unless BATCH / LR are set), then evaluate the
# baseline and the fine-tuned folder together (`saelab eval`, one clean pass shared, the same held-out
# tokens, sink positions kept clean). Prints the wall time of each fine-tune and the metrics table.
# Usage: OUT=runs/finetune FRACTION=0.05 THREADS=2 bash bench/finetune_numbers.sh SAE_DIR [SAE_DIR ...]
#   BATCH=4096 (or any): the tokens per step to use instead of the default (the old default was 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/finetune}
FRACTION=${FRACTION:-0.05}
BATCH=${BATCH:-}  # empty: the kl+mse default (about 48 steps; saelab/train/finetune_budget.py)
LR=${LR:-}        # empty: the kl+mse default (a tenth of the scratch rate)
T=${THREADS:-2}
EVAL=${EVAL:-"--tokens 16384 --ce-tokens 16384"}  # what docs/E2E.md measured with; more CE tokens, less noise
[ $# -gt 0 ] || { echo "usage: bash bench/finetune_numbers.sh SAE_DIR [SAE_DIR ...]" >&2; exit 2; }
mkdir -p "$OUT"
for src in "$@"; do
  name=$(basename "$src")
  base_tokens=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['saelab']['training_tokens'])" "$src/cfg.json")
  tokens=$(python -c "print(int($base_tokens * $FRACTION))")
  run="$OUT/$name-ft${BATCH:+-b$BATCH}"
  t0=$SECONDS
  saelab train --init-from "$src" --loss kl+mse --tokens "$tokens" ${BATCH:+--batch-tokens $BATCH} ${LR:+--lr $LR} \
    --threads "$T" --out "$run" --overwrite
  echo "$name: fine-tune of $tokens tokens, wall $((SECONDS - t0)) s"
  # the baseline is copied so its own metrics.json stays untouched; both share the clean passes
  rm -rf "$OUT/$name-base" && cp -r "$src" "$OUT/$name-base" && rm -f "$OUT/$name-base/metrics.json"
  ft=$(ls -d "$run"/*/ | head -1)
  # shellcheck disable=SC2086
  saelab eval "$OUT/$name-base" "$ft" $EVAL --threads "$T" --overwrite
  python - "$OUT/$name-base" "$ft" <<'PY'
import json, sys
rows = [(p, json.load(open(f"{p}/metrics.json"))["metrics"]) for p in sys.argv[1:]]
b = rows[0][1]
for p, m in rows:
    s = json.load(open(f"{p}/cfg.json"))["saelab"]
    cut = lambda k: f"{(m[k] - b[k]) / abs(b[k]):+.1%}" if m is not b else ""
    print(f"{p}: steps {s.get('steps')} FVU {m['fvu']:.4f} {cut('fvu')} KL {m['kl']:.4f} {cut('kl')} "
          f"CE increase {m['ce_increase']:+.4f} {cut('ce_increase')} dead {m['dead_fraction']:.2%} "
          f"(CE on {m['ce_eval_tokens']:,} tokens)")
PY
done
