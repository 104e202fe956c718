"""What the two foreign formats share (SAELens: foreign_saelens.py, sparsify: foreign_sparsify.py; finding
and loading either: foreign.py): their weight file names, the hookpoint prefix sparsify strips, and the
checks both readers and writers make on tensors and types."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .base import SparseCoder
from .layout import CFG, WEIGHTS

SAELENS_WEIGHTS = WEIGHTS
SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_TRANSCODERS = ("transcoder", "skip_transcoder")
SPARSIFY_PREFIX = "model."  # sparsify names hookpoints relative to model.base_model ("model" for Llama)


def f32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float32) for k, v in tensors.items()}


def need_tensors(tensors: dict, names_shapes: dict, path: Path) -> None:
    for name, shape in names_shapes.items():
        if name not in tensors:
            raise UserError(f"{path} lacks tensor {name!r} (has {', '.join(sorted(tensors))})")
        if tuple(tensors[name].shape) != shape:
            raise UserError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, {CFG} implies {shape}")


def refuse_saelab_only(sae: SparseCoder, fmt: str) -> None:
    """A type neither SAELens nor sparsify has (ForeignNames.saelab_only): exporting it would write a
    folder no reader understands."""
    what = type(sae).foreign.saelab_only
    if what:
        raise UserError(
            f"{fmt} has no {what}: a --arch {sae.cfg.arch} dictionary cannot be exported; "
            f"keep the saelab folder (every saelab command reads it)"
        )
