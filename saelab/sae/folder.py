"""The SAE folder: `cfg.json` + `sae_weights.safetensors`, laid out so SAELens can load it.

cfg.json keys: architecture (topk | jumprelu | standard), d_in, d_sae, k (topk), dtype,
normalize_activations ("none": our input scaling is folded into the weights),
apply_b_dec_to_input, metadata{model_name, hook_name, context_size, prepend_bos}, and our own
keys under `saelab` (arch, hookpoint, out_hookpoint, d_out, loss, training tokens, sink config,
format version). BatchTopK is saved as a JumpReLU with one shared threshold, as SAELens does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..errors import UserError
from ..storage import read_json, read_tensors, write_json, write_tensors
from . import SaeConfig, SparseCoder, build_sae

FORMAT_VERSION = 1
WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
_SAELENS_ARCH = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}


def save_sae(sae: SparseCoder, folder: Path, model_name: str, context: int, extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    cfg = {
        "architecture": _SAELENS_ARCH[c.arch],
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not c.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": model_name, "hook_name": c.hookpoint, "context_size": context,
                     "prepend_bos": True, "hook_head_index": None},
        "saelab": {"format_version": FORMAT_VERSION, "saelab_version": __version__, "config": c.to_dict(),
                   **(extra or {})},
    }
    if c.k is not None and c.arch == "topk":
        cfg["k"] = c.k
    if c.is_transcoder:
        cfg["d_out"] = c.d_out
        cfg["metadata"]["hook_name_out"] = c.out_hookpoint
    write_tensors(folder / WEIGHTS, sae.folded_state())
    write_json(folder / CFG, cfg)
    return folder


def load_sae(folder: Path, device: str = "cpu") -> tuple[SparseCoder, dict]:
    """Load any SAE folder in our format; errors name the file and what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not an SAE folder (expected a folder with {CFG} and {WEIGHTS})")
    cfg = read_json(folder / CFG)
    ours = cfg.get("saelab")
    if not ours or "config" not in ours:
        from ..interop import load_foreign  # SAELens / sparsify folders (docs/SCALE.md)
        return load_foreign(folder, device)
    if ours.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{folder} uses SAE format version {ours['format_version']}; this saelab reads up to {FORMAT_VERSION}")
    sae_cfg = SaeConfig.from_dict(ours["config"])
    sae = build_sae(sae_cfg)
    tensors = read_tensors(folder / WEIGHTS)
    expected = {"W_enc": (sae_cfg.d_in, sae_cfg.d_sae), "b_enc": (sae_cfg.d_sae,),
                "W_dec": (sae_cfg.d_sae, sae_cfg.d_out), "b_dec": (sae_cfg.d_out,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{folder / WEIGHTS} lacks tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise UserError(f"{folder / WEIGHTS}: {name} has shape {tuple(tensors[name].shape)}, cfg.json says {shape}")
    if sae_cfg.arch in ("jumprelu", "batchtopk") and "threshold" not in tensors:
        raise UserError(f"{folder / WEIGHTS} lacks the `threshold` tensor a {sae_cfg.arch} SAE needs")
    sae.load_folded({k: v.to(torch.float32) for k, v in tensors.items()})
    return sae.to(device).eval(), cfg
