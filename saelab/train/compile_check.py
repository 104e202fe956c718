"""`--compile`: what torch.compile needs, checked before any model loads.

The compiled function is objectives.sae_loss (the dictionary's forward and the local loss; the
backward through AOTAutograd), never the LM. Inductor writes C++ on a CPU (it needs a compiler on
PATH: torch._inductor.config.cpp.cxx) and triton kernels on CUDA."""

from __future__ import annotations

import importlib.util
import os
import shutil

from ..errors import UserError


def check_compile(device: str, loss: str, finetune_fraction: float | None) -> None:
    if loss != "local" or finetune_fraction:
        what = f"--loss {loss}" if loss != "local" else "--finetune-fraction"
        raise UserError(
            f"--compile compiles the local objective's dictionary step; {what} runs the LM inside the "
            f"loss and is not compiled. Drop --compile"
        )
    if device.startswith("mps"):
        raise UserError(
            "--compile: torch.compile on mps is not supported here; use --device cpu or cuda, or drop --compile"
        )
    if device.startswith("cuda"):
        if importlib.util.find_spec("triton") is None:
            raise UserError(
                "--compile on CUDA needs triton (pip install triton, the version your torch names); or drop --compile"
            )
        return
    import torch._inductor.config as inductor

    names = [os.environ.get("CXX")] + [c for c in inductor.cpp.cxx if c]
    if not any(n and shutil.which(n) for n in names):
        raise UserError(
            f"--compile on CPU needs a C++ compiler for inductor's kernels (tried "
            f"{', '.join(n for n in names if n)}); install g++ (apt-get install g++) or set CXX, "
            f"or drop --compile"
        )
