"""The on-disk layout of an SAE folder, shared by our own folders (folder.py) and the foreign
formats (foreign.py): file names, the format version, and the SAELens-compatible cfg.json."""

from __future__ import annotations

from .. import __version__
from .base import SparseCoder

FORMAT_VERSION = 1
CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
# BatchTopK (and Matryoshka BatchTopK, its inference form) is saved as a JumpReLU with one shared
# threshold, as SAELens does.
SAELENS_ARCH = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard",
                "matryoshka": "jumprelu", "gated": "gated",
                "codebook": "codebook", "crosscoder": "crosscoder"}  # saelab only (no SAELens type: export refused)
# Tensors SAELens names differently (ours -> SAELens): a gated SAE's gate bias is b_gate.
SAELENS_TENSOR_NAMES = {"gated": {"b_enc": "b_gate"}}


def cfg_json(sae: SparseCoder, model_name: str, context: int, saelab: dict) -> dict:
    """cfg.json of an SAE: the SAELens keys, and ours under `saelab` (config, provenance, version)."""
    c = sae.cfg
    cfg = {"architecture": SAELENS_ARCH[c.arch], "d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": not c.is_transcoder, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"model_name": model_name, "hook_name": c.hookpoint, "context_size": context,
                        "prepend_bos": True, "hook_head_index": None},
           "saelab": {"format_version": FORMAT_VERSION, "saelab_version": __version__, "config": c.to_dict(), **saelab}}
    if c.k is not None and c.arch == "topk":
        cfg["k"] = c.k
    if c.is_transcoder:
        cfg["d_out"] = c.d_out
        cfg["metadata"]["hook_name_out"] = c.out_hookpoint
    return cfg
