"""Every dictionary architecture by its `--arch` name: adding one is a file and a line here.

The type's class answers every question about it (kind.py): its options, capabilities and foreign
names. Callers holding a name ask `kind_of(arch)`; callers holding a dictionary ask `type(sae)`."""

from .base import SaeConfig, SparseCoder
from .batchtopk import BatchTopKSae
from .clt import CrossLayerTranscoder
from .codebook import CodebookSae
from .crosscoder import CrosscoderSae
from .gated import GatedSae
from .jumprelu import JumpReLUSae
from .kind import check_declared
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
    "clt": CrossLayerTranscoder,
}
for _name, _cls in ARCHITECTURES.items():
    check_declared(_name, _cls)


def kind_of(arch: str) -> type[SparseCoder]:
    """The class registered as `arch` (a KeyError names the known ones)."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise KeyError(f"unknown dictionary type {arch!r}; known: {', '.join(ARCHITECTURES)}") from None


def uses_k(arch: str) -> bool:
    """Whether `arch` fixes sparsity by k (one SAE per --k) rather than by a penalty (--sparsity-coeff)."""
    cls = ARCHITECTURES.get(arch)
    return bool(cls and cls.capabilities.uses_k)


def multi_site(cfg: SaeConfig) -> bool:
    """Whether the dictionary of `cfg` reads several sites at once (a crosscoder: sites joined by '+')."""
    return kind_of(cfg.arch).capabilities.multi_site


def build_sae(cfg: SaeConfig) -> SparseCoder:
    return ARCHITECTURES[cfg.arch](cfg)
