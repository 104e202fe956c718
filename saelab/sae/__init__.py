"""Dictionaries: one base class (`SparseCoder`), one file per architecture, a loader for folders."""

from .base import SaeConfig, SaeOutput, SparseCoder
from .batchtopk import BatchTopKSae
from .jumprelu import JumpReLUSae
from .latents import Latents
from .relu import ReluSae
from .topk import TopKSae

ARCHITECTURES: dict[str, type[SparseCoder]] = {
    "topk": TopKSae,
    "batchtopk": BatchTopKSae,
    "jumprelu": JumpReLUSae,
    "relu": ReluSae,
}


def build_sae(cfg: SaeConfig) -> SparseCoder:
    return ARCHITECTURES[cfg.arch](cfg)


__all__ = ["ARCHITECTURES", "BatchTopKSae", "JumpReLUSae", "Latents", "ReluSae", "SaeConfig", "SaeOutput",
           "SparseCoder", "TopKSae", "build_sae"]
