"""Dictionaries: one base class (`SparseCoder`), one file per architecture (registry.py names
them), the SAE folder on disk (folder.py, layout.py), foreign formats (foreign.py, foreign_saelens.py,
foreign_sparsify.py, foreign_layout.py, convert.py), and the splice of a dictionary into a model (splice.py)."""

from .base import SaeConfig, SaeOutput, SparseCoder
from .batchtopk import BatchTopKSae
from .clt import CrossLayerTranscoder
from .codebook import CodebookSae
from .crosscoder import CrosscoderSae
from .gated import GatedSae
from .jumprelu import JumpReLUSae
from .latents import Latents
from .matryoshka import MatryoshkaSae
from .registry import ARCHITECTURES, build_sae, uses_k
from .relu import ReluSae
from .topk import TopKSae

__all__ = [
    "ARCHITECTURES",
    "BatchTopKSae",
    "CodebookSae",
    "CrosscoderSae",
    "CrossLayerTranscoder",
    "GatedSae",
    "JumpReLUSae",
    "Latents",
    "MatryoshkaSae",
    "ReluSae",
    "SaeConfig",
    "SaeOutput",
    "SparseCoder",
    "TopKSae",
    "build_sae",
    "uses_k",
]
