"""Read and write EleutherAI `sparsify` folders (foreign.py finds and dispatches; the shared file names
and checks are in foreign_layout.py).

sparsify folder: `cfg.json` + `sae.safetensors`; a run folder holds one such folder per hookpoint,
  named after the hookpoint relative to `model.base_model` ("layers.6" for a Llama's "model.layers.6").
  tensors  encoder.weight [num_latents, d_in], encoder.bias [num_latents], W_dec [num_latents, d_in], b_dec [d_in],
           W_skip [d_in, d_in] (skip_connection: + x @ W_skip.T, as ours and SAELens')
  cfg      activation (topk), k, num_latents (0 -> d_in * expansion_factor), expansion_factor, d_in,
           normalize_decoder, multi_topk, skip_connection, transcode (predict a module's output from its input).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..storage import read_json, read_tensors, write_json, write_tensors
from .base import SaeConfig, SparseCoder
from .cfg_fields import cfg_int, need_object
from .foreign_layout import SPARSIFY_PREFIX, SPARSIFY_WEIGHTS, f32, need_tensors, refuse_saelab_only
from .layout import CFG
from .registry import ARCHITECTURES, build_sae


def sparsify_reader() -> str:
    """The --arch a sparsify folder loads as: the first registered type that declares sparsify support."""
    return next(arch for arch, cls in ARCHITECTURES.items() if cls.foreign.sparsify)


def load_sparsify(folder: Path, prefix: str) -> tuple[SparseCoder, dict]:
    path = folder / CFG
    cfg = need_object(path, read_json(path))
    if cfg.get("activation", "topk") != "topk":
        raise UserError(f"{path}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    if cfg.get("embed_skip") or cfg.get("gram_lookup"):
        raise UserError(f"{path}: sparsify embedding skips / n-gram lookups are not supported")
    if "d_in" not in cfg or "k" not in cfg:
        raise UserError(f"{path} lacks `d_in` or `k`: not a sparsify config")
    d_in, k = cfg_int(path, cfg, "d_in"), cfg_int(path, cfg, "k")
    d_sae = cfg_int(path, cfg, "num_latents", default=0, minimum=0) or d_in * cfg_int(
        path, cfg, "expansion_factor", default=32
    )
    wpath = folder / SPARSIFY_WEIGHTS
    t = f32(read_tensors(wpath))
    skip = bool(cfg.get("skip_connection"))  # W_skip [d_in, d_in], added as x @ W_skip.T
    if "W_skip" in t and not skip:
        raise UserError(f"{wpath} has a W_skip tensor but {CFG} says skip_connection is false")
    need_tensors(t, {"W_skip": (d_in, d_in)} if skip else {}, wpath)
    need_tensors(
        t, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}, wpath
    )
    hook = prefix + folder.name
    transcode = bool(cfg.get("transcode"))
    sc = SaeConfig(
        arch=sparsify_reader(),
        d_in=d_in,
        d_sae=d_sae,
        hookpoint=f"{hook}:input" if transcode else hook,
        out_hookpoint=hook if transcode else None,
        k=k,
        skip=skip,
    )
    sae = build_sae(sc)
    sae.load_folded(
        {
            "W_enc": t["encoder.weight"].t().contiguous(),
            "b_enc": t["encoder.bias"],
            "W_dec": t["W_dec"],
            "b_dec": t["b_dec"],
        }
        | ({"W_skip": t["W_skip"]} if skip else {})
    )
    return sae, {"hook_name": hook}


def export_sparsify(sae: SparseCoder, out_root: Path, prefix: str = SPARSIFY_PREFIX) -> Path:
    """Write `out_root/<hookpoint relative to base_model>/{cfg.json, sae.safetensors}` as sparsify does."""
    c = sae.cfg
    refuse_saelab_only(sae, "sparsify")
    if not type(sae).foreign.sparsify:
        raise UserError(f"sparsify stores TopK coders only; this SAE is {c.arch}")
    if c.is_transcoder:
        if c.hookpoint != f"{c.out_hookpoint}:input" or c.d_out != c.d_in:
            raise UserError(
                f"sparsify transcoders predict a module's output from that same module's input with "
                f"equal widths; this one maps {c.hookpoint} -> {c.out_hookpoint}"
            )
        site = c.out_hookpoint
    else:
        if c.hookpoint.endswith(":input"):
            raise UserError(f"sparsify hookpoints are module outputs; {c.hookpoint} is a module input")
        site = c.hookpoint
    name = site[len(prefix) :] if prefix and site.startswith(prefix) else site
    folder = Path(out_root) / name
    ef = c.d_sae // c.d_in if c.d_sae % c.d_in == 0 else 0
    cfg = {
        "activation": "topk",
        "expansion_factor": ef or 32,
        "normalize_decoder": True,
        "num_latents": c.d_sae,
        "k": c.k,
        "multi_topk": False,
        "skip_connection": c.skip,
        "transcode": c.is_transcoder,
        "d_in": c.d_in,
    }
    s = sae.folded_state()
    write_tensors(
        folder / SPARSIFY_WEIGHTS,
        {
            "encoder.weight": s["W_enc"].t().contiguous(),
            "encoder.bias": s["b_enc"],
            "W_dec": s["W_dec"],
            "b_dec": s["b_dec"],
        }
        | {n: s[n] for n in ("W_skip",) if n in s},
    )
    write_json(folder / CFG, cfg)
    return folder
