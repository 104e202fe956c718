#!/usr/bin/env bash
# The GPU path on a tiny randomly initialised Llama (config below), end to end on --device cuda:
# local and e2e+ds training with a resume, held-out eval, latent cache, LLM explain and the judged
# scorers. Seconds, not a benchmark: it fails loudly where a tensor sits on the wrong device.
# Usage: bash bench/gpu_check.sh            (TOKENIZER_DIR: a folder with the embedded model's
#        tokenizer.json, tokenizer_config.json, chat_template.jinja; default: the embedded model's)
set -euo pipefail
cd "$(dirname "$0")/.."
SL=${SAELAB:-saelab}
DEV=${DEVICE:-cuda}
W=${WORK:-/tmp/saelab_gpu_check}
rm -rf "$W" && mkdir -p "$W"
python - "$W/model" "${TOKENIZER_DIR:-}" <<'PY'
import json, shutil, sys, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
out, tok = Path(sys.argv[1]), sys.argv[2]
if not tok:
    from saelab.models import _embedded_folder
    tok = _embedded_folder()
cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1,
                  eos_token_id=2)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(out)
for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(Path(tok) / f, out / f)
print("tiny model ->", out)
PY
C="--model $W/model --corpus builtin --hookpoints model.layers.1 --dict-size 256 --k 8 --batch-tokens 1024 --context 64"
$SL train $C --tokens 32768 --checkpoint-every 8192 --device "$DEV" --out "$W/local"
# resume: a run stopped after its first checkpoint, continued on the device (SKIP_RESUME=1 skips it)
if [ -z "${SKIP_RESUME:-}" ]; then
$SL train $C --tokens 32768 --checkpoint-every 8192 --device "$DEV" --out "$W/resumed" & PID=$!
# killed from outside (SIGKILL) as soon as its first checkpoint is on disk
while [ ! -e "$W/resumed/checkpoint.safetensors" ] && kill -0 $PID 2>/dev/null; do sleep 0.01; done
kill -9 $PID 2>/dev/null || true; wait $PID || true
$SL train $C --tokens 32768 --checkpoint-every 8192 --device "$DEV" --out "$W/resumed" --resume
python - "$W" <<'PY'
import sys, torch
from safetensors.torch import load_file
a = load_file(f"{sys.argv[1]}/local/model.layers.1-topk-k8/sae_weights.safetensors")
b = load_file(f"{sys.argv[1]}/resumed/model.layers.1-topk-k8/sae_weights.safetensors")
d = max(float((a[k] - b[k]).abs().max()) for k in a)
print(f"resumed vs uninterrupted on the device: max |diff| {d:.2e}")
PY
fi
$SL train $C --tokens 8192 --loss e2e+ds --device "$DEV" --out "$W/e2e"
$SL eval "$W/local/model.layers.1-topk-k8" --tokens 8192 --ce-tokens 2048 --device "$DEV"
$SL sweep $C --tokens 4096 --losses local e2e --device "$DEV" --eval-tokens 2048 --eval-ce-tokens 512 --out "$W/sweep"
$SL cache "$W/local/model.layers.1-topk-k8" --tokens 16384 --out "$W/cache"
# generation on the device (a random model's replies do not parse: recorded failures are fine)
$SL explain "$W/cache" --n-latents 6 --n-explain 10 --n-score-activating 10 --n-score-random 5 --n-score-hard 5 \
  --llm "$W/model" --device "$DEV" --batch-size 64 --out "$W/run_llm"
# judged and LM scorers on the device, on statistical explanations
$SL explain "$W/cache" --n-latents 6 --n-explain 10 --n-score-activating 10 --n-score-random 5 --n-score-hard 5 \
  --explainer stats --out "$W/run"
$SL score "$W/run" --scorers detection fuzzing surprisal intervention --llm "$W/model" --device "$DEV" --batch-size 64
$SL report "$W/run" --out "$W/report"
python - "$W/run" <<'PY'
import json, sys
for s in ("detection", "fuzzing", "surprisal", "intervention"):
    rs = [json.loads(l) for l in open(f"{sys.argv[1]}/scores_{s}.jsonl")]
    assert rs and all(r["ok"] for r in rs), (s, [r.get("error") for r in rs])
print("scored on the device:", len(rs), "latents x 4 scorers")
PY
echo "GPU CHECK PASSED on $DEV"
