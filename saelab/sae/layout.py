"""The on-disk layout of an SAE folder, shared by our own folders (folder.py) and the foreign
formats (foreign.py): file names, the format version, and the SAELens-compatible cfg.json."""

from __future__ import annotations

from .. import __version__
from .base import SparseCoder

FORMAT_VERSION = 1
CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"


def cfg_json(sae: SparseCoder, model_name: str, context: int, saelab: dict) -> dict:
    """cfg.json of an SAE: the SAELens keys, and ours under `saelab` (config, provenance, version).
    `architecture` is the name the type declares for SAELens (`foreign.saelens`, sae/kind.py)."""
    c = sae.cfg
    architecture = type(sae).foreign.saelens
    cfg = {
        "architecture": architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not c.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name,
            "hook_name": c.hookpoint,
            "context_size": context,
            "prepend_bos": True,
            "hook_head_index": None,
        },
        "saelab": {"format_version": FORMAT_VERSION, "saelab_version": __version__, "config": c.to_dict(), **saelab},
    }
    if c.k is not None and architecture == "topk":  # SAELens' TopK reads k at the top level
        cfg["k"] = c.k
    if c.is_transcoder:
        cfg["d_out"] = c.d_out
        cfg["metadata"]["hook_name_out"] = c.out_hookpoint
    return cfg
