"""Every dictionary architecture by its `--arch` name: adding one is a file and a line here."""

from .base import SaeConfig, SparseCoder
from .batchtopk import BatchTopKSae
from .jumprelu import JumpReLUSae
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
