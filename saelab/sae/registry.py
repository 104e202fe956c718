"""Every dictionary architecture by its `--arch` name: adding one is a file and a line here."""

from .base import SaeConfig, SparseCoder
from .batchtopk import BatchTopKSae
from .codebook import CodebookSae
from .crosscoder import CrosscoderSae
from .gated import GatedSae
from .jumprelu import JumpReLUSae
from .matryoshka import MatryoshkaSae
from .relu import ReluSae
from .topk import TopKSae

ARCHITECTURES: dict[str, type[SparseCoder]] = {
    "topk": TopKSae,
    "batchtopk": BatchTopKSae,
    "jumprelu": JumpReLUSae,
    "relu": ReluSae,
    "matryoshka": MatryoshkaSae,
    "gated": GatedSae,
    "codebook": CodebookSae,
    "crosscoder": CrosscoderSae,
}


def uses_k(arch: str) -> bool:
    """Whether `arch` fixes sparsity by k (one SAE per --k) rather than by a penalty (--sparsity-coeff)."""
    cls = ARCHITECTURES.get(arch)
    return bool(cls and cls.uses_k)


def build_sae(cfg: SaeConfig) -> SparseCoder:
    return ARCHITECTURES[cfg.arch](cfg)
