"""Interoperability: read SAEs published by SAELens and EleutherAI `sparsify`, write ours in both.

Why: users enter at any stage with their own dictionary, and take ours to the tools they use.
Everything converts to one in-memory `SparseCoder` acting on RAW activations, so the rest of
saelab (evaluate, splice, latent cache) never sees a foreign layout.

SAELens folder (v5 and v6): `cfg.json` + `sae_weights.safetensors`
  tensors  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] (jumprelu);
           gated: b_gate (our b_enc), r_mag, b_mag [d_sae]; skip_transcoder: W_skip [d_out, d_in]
  cfg      architecture standard | topk | jumprelu | gated | transcoder | skip_transcoder (ReLU; d_out,
           hook_name_out at the top level, input never centred) (v5: standard + activation_fn_str "topk" and
           activation_fn_kwargs.k), d_in, d_sae, dtype, apply_b_dec_to_input, normalize_activations,
           k (topk), rescale_acts_by_decoder_norm (topk, v6), hook_name / model_name / context_size
           either at top level (v5) or under `metadata` (v6).
sparsify folder: `cfg.json` + `sae.safetensors`; a run folder holds one such folder per hookpoint,
  named after the hookpoint relative to `model.base_model` ("layers.6" for a Llama's "model.layers.6").
  tensors  encoder.weight [num_latents, d_in], encoder.bias [num_latents], W_dec [num_latents, d_in], b_dec [d_in],
           W_skip [d_in, d_in] (skip_connection: + x @ W_skip.T, as ours and SAELens')
  cfg      activation (topk), k, num_latents (0 -> d_in * expansion_factor), expansion_factor, d_in,
           normalize_decoder, multi_topk, skip_connection, transcode (predict a module's output from its input).

Conversions that are not a plain copy (all exact as functions, see tests/test_interop.py):
  SAELens apply_b_dec_to_input=false -> b_enc' = b_enc + b_dec @ W_enc (we always centre by b_dec);
  SAELens normalize_activations=expected_average_only_in with a known factor s -> folded as SAELens
  folds it (W_enc*s, W_dec/s, b_dec/s); rescale_acts_by_decoder_norm -> folded into W_enc, b_enc, W_dec.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import __version__
from ..errors import UserError
from ..families import family_for_name
from ..storage import read_json, read_tensors, write_json, write_tensors
from .base import SaeConfig, SparseCoder
from .layout import CFG, WEIGHTS, cfg_json
from .registry import ARCHITECTURES, build_sae

SAELENS_WEIGHTS = WEIGHTS
SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_TRANSCODERS = ("transcoder", "skip_transcoder")
SPARSIFY_PREFIX = "model."  # sparsify names hookpoints relative to model.base_model ("model" for Llama)


# ---------------------------------------------------------------- detection and sources
def detect_format(folder: Path) -> str:
    """'saelab' | 'saelens' | 'sparsify' for one SAE folder; a clear error for anything else."""
    folder = Path(folder)
    if not (folder / CFG).exists():
        raise UserError(f"{folder} has no {CFG}: not an SAE folder (expected SAELens, sparsify or saelab layout)")
    if (folder / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    if (folder / SAELENS_WEIGHTS).exists():
        return "saelab" if "saelab" in read_json(folder / CFG) else "saelens"
    raise UserError(f"{folder} has {CFG} but neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} (sparsify)")


def sae_folders(root: Path) -> list[Path]:
    """One SAE folder, or a run folder with SAE folders inside (sparsify writes one per hookpoint)."""
    root = Path(root)
    if (root / CFG).exists():
        return [root]
    subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / CFG).exists()) if root.is_dir() else []
    if not subs:
        raise UserError(f"{root} holds no SAE folder (a folder with {CFG})")
    return subs


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")


def resolve_source(spec: str, download=None) -> Path:
    """A local folder, or `owner/repo[/sub/folder]` on the Hugging Face hub (downloaded once into
    the HF cache; only the sub-folder's files are fetched)."""
    p = Path(spec)
    if p.exists():
        return p
    if not _HUB_ID.match(spec):
        raise UserError(f"{spec} is neither an existing folder nor a hub id (owner/repo[/sub/folder])")
    owner, repo, *rest = spec.split("/")
    sub = "/".join(rest)
    if download is None:
        from huggingface_hub import snapshot_download as download
    try:
        local = Path(download(f"{owner}/{repo}", allow_patterns=[f"{sub}/*"] if sub else None))
    except Exception as e:  # noqa: BLE001 - network, auth and missing-repo errors all end here
        raise UserError(
            f"could not download {owner}/{repo} from the Hugging Face hub ({type(e).__name__}: {e}); "
            f"without internet, pass a local folder"
        ) from e
    folder = local / sub if sub else local
    if not folder.exists():
        raise UserError(f"hub repo {owner}/{repo} has no folder {sub!r}")
    return folder


# ---------------------------------------------------------------- loading
def load_foreign(
    folder: Path, device: str = "cpu", norm_scaling_factor: float | None = None, prefix: str = SPARSIFY_PREFIX
) -> tuple[SparseCoder, dict]:
    """Load a SAELens or sparsify folder -> (SAE on raw activations, cfg.json in OUR layout with the
    original config kept under saelab.imported_from)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    if fmt == "saelens":
        sae, meta = _load_saelens(folder, norm_scaling_factor, prefix)
    elif fmt == "sparsify":
        sae, meta = _load_sparsify(folder, prefix)
    else:
        raise UserError(f"{folder / CFG} has a `saelab` block without `config`: the file is damaged")
    extra = {
        "imported_from": {"format": fmt, "path": str(folder), "cfg": read_json(folder / CFG)},
        "model_spec": meta.get("model_name") or "embedded",
    }
    return sae.to(device).eval(), cfg_json(sae, meta.get("model_name") or "", meta.get("context_size") or 0, extra)


def _f32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float32) for k, v in tensors.items()}


def _need(tensors: dict, names_shapes: dict, path: Path) -> None:
    for name, shape in names_shapes.items():
        if name not in tensors:
            raise UserError(f"{path} lacks tensor {name!r} (has {', '.join(sorted(tensors))})")
        if tuple(tensors[name].shape) != shape:
            raise UserError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, {CFG} implies {shape}")


def saelens_meta(cfg: dict) -> dict:
    """hook_name, model_name, context_size, ... from v6 `metadata` or v5 top-level keys."""
    keys = (
        "model_name",
        "hook_name",
        "context_size",
        "prepend_bos",
        "hook_head_index",
        "dataset_path",
        "hook_name_out",
    )
    meta = dict(cfg.get("metadata") or {})
    for k in keys:
        if meta.get(k) is None and cfg.get(k) is not None:
            meta[k] = cfg[k]
    return meta


def tl_to_module(hook: str, prefix: str = SPARSIFY_PREFIX, model_name: str | None = None) -> str:
    """TransformerLens hook names (what most SAELens releases use) -> our module names, as the family of
    `model_name` names them (families.py; Llama's names for a name of no listed family):
    blocks.6.hook_resid_post -> model.layers.6, hook_resid_pre -> its input, hook_resid_mid -> the MLP norm's
    input, hook_mlp_out / hook_attn_out -> what the MLP / attention add to the residual stream. A `prefix`
    other than the default replaces the family's base-model path. Any other name is returned unchanged."""
    base = prefix if prefix != SPARSIFY_PREFIX else None
    return family_for_name(model_name).tl_site(hook, base) or hook


def saelens_readers() -> dict[str, str]:
    """SAELens architecture name -> the --arch that reads it: every registered type that declares itself
    the reader of its SAELens name (sae/kind.py ForeignNames.saelens_reader)."""
    return {cls.foreign.saelens: arch for arch, cls in ARCHITECTURES.items() if cls.foreign.saelens_reader}


def _saelens_arch(cfg: dict, path: Path) -> tuple[str, int | None]:
    """(our --arch, k) of a SAELens cfg.json: `architecture`, with v5's `standard` + activation topk read as
    topk, and the transcoders (ReLU, SAELens' `standard` form with another output site) as `standard`."""
    arch = cfg.get("architecture", "standard")
    fn = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    name = "topk" if arch == "standard" and fn == "topk" else "standard" if arch in SAELENS_TRANSCODERS else arch
    readers = saelens_readers()
    if name not in readers or (arch == "standard" and fn not in ("relu", "topk")):
        raise UserError(
            f"{path}: SAELens architecture {arch!r} (activation {fn!r}) is not supported; "
            f"saelab reads {', '.join(readers)}"
        )
    if name == "topk":
        if not k:
            raise UserError(f"{path}: a topk SAE needs `k` (or activation_fn_kwargs.k)")
        if k != int(k):
            raise UserError(f"{path}: k={k} is not an integer; fractional k (batchtopk) is not supported")
        return readers[name], int(k)
    return readers[name], None


def _load_saelens(folder: Path, norm_scaling_factor: float | None, prefix: str) -> tuple[SparseCoder, dict]:
    path = folder / CFG
    cfg = read_json(path)
    arch, k = _saelens_arch(cfg, path)
    lens_arch = ARCHITECTURES[arch].foreign.saelens  # the SAELens form the quirks below belong to
    meta = saelens_meta(cfg)
    if cfg.get("reshape_activations", "none") not in ("none", None) or meta.get("hook_head_index") is not None:
        raise UserError(f"{path}: hook_z reshaping / per-head SAEs are not supported")
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    d_out = int(cfg.get("d_out") or d_in)
    if not meta.get("hook_name"):
        raise UserError(f"{path} names no hook_name (neither metadata.hook_name nor top-level hook_name)")
    model_name = meta.get("model_name")  # the family of the TransformerLens hook names
    hook = tl_to_module(meta["hook_name"], prefix, model_name)
    t = _f32(read_tensors(folder / SAELENS_WEIGHTS))
    wpath = folder / SAELENS_WEIGHTS
    for ours, theirs in ARCHITECTURES[arch].foreign.saelens_tensors.items():  # gated: b_gate is our b_enc
        if theirs in t:
            t[ours] = t.pop(theirs)
    _need(t, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}, wpath)
    if lens_arch == "jumprelu":
        if "threshold" not in t and "log_threshold" in t:
            t["threshold"] = t.pop("log_threshold").exp()
        _need(t, {"threshold": (d_sae,)}, wpath)
    if lens_arch == "gated":
        _need(t, {"r_mag": (d_sae,), "b_mag": (d_sae,)}, wpath)
    W_enc, b_enc, W_dec, b_dec = t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]
    norm = cfg.get("normalize_activations") or "none"
    if norm == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise UserError(
                f"{path}: normalize_activations=expected_average_only_in needs the dataset's norm "
                f"scaling factor (--norm-scaling-factor); SAELens publishes it with the release"
            )
        s = float(norm_scaling_factor)
        W_enc, W_dec, b_dec = W_enc * s, W_dec / s, b_dec / s  # SAELens fold_activation_norm_scaling_factor
    elif norm != "none":
        raise UserError(
            f"{path}: normalize_activations={norm!r} rescales every token at run time; "
            f"saelab supports 'none' and 'expected_average_only_in'"
        )
    if lens_arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        n = W_dec.norm(dim=1)  # [d_sae]
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    transcoder = d_out != d_in or bool(meta.get("hook_name_out"))
    if not transcoder and cfg.get("apply_b_dec_to_input") is False:
        b_enc = b_enc + b_dec @ W_enc  # we always centre an SAE's input by b_dec
        if lens_arch == "gated":  # ... both of a gated SAE's paths
            t["b_mag"] = t["b_mag"] + (b_dec @ W_enc) * t["r_mag"].exp()
    skip = cfg.get("architecture") == "skip_transcoder"
    if skip:
        _need(t, {"W_skip": (d_out, d_in)}, wpath)
    if transcoder and cfg.get("apply_b_dec_to_input") and cfg.get("architecture") not in SAELENS_TRANSCODERS:
        raise UserError(f"{path}: a transcoder that subtracts its output bias from its input is not supported")
    sc = SaeConfig(
        arch=arch,
        d_in=d_in,
        d_sae=d_sae,
        hookpoint=hook,
        d_out=d_out,
        out_hookpoint=tl_to_module(meta.get("hook_name_out"), prefix, model_name) if transcoder else None,
        k=k,
        skip=skip,
    )
    sae = build_sae(sc)
    extra = sae.extra_state_tensors()  # jumprelu: threshold; gated: r_mag, b_mag
    _need(t, {n: tuple(v.shape) for n, v in extra.items()}, wpath)
    extra |= {"W_skip": None} if skip else {}
    sae.load_folded({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec} | {n: t[n] for n in extra})
    return sae, meta


def sparsify_reader() -> str:
    """The --arch a sparsify folder loads as: the first registered type that declares sparsify support."""
    return next(arch for arch, cls in ARCHITECTURES.items() if cls.foreign.sparsify)


def _load_sparsify(folder: Path, prefix: str) -> tuple[SparseCoder, dict]:
    path = folder / CFG
    cfg = read_json(path)
    if cfg.get("activation", "topk") != "topk":
        raise UserError(f"{path}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    if cfg.get("embed_skip") or cfg.get("gram_lookup"):
        raise UserError(f"{path}: sparsify embedding skips / n-gram lookups are not supported")
    if "d_in" not in cfg or "k" not in cfg:
        raise UserError(f"{path} lacks `d_in` or `k`: not a sparsify config")
    d_in, k = int(cfg["d_in"]), int(cfg["k"])
    d_sae = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
    wpath = folder / SPARSIFY_WEIGHTS
    t = _f32(read_tensors(wpath))
    skip = bool(cfg.get("skip_connection"))  # W_skip [d_in, d_in], added as x @ W_skip.T
    if "W_skip" in t and not skip:
        raise UserError(f"{wpath} has a W_skip tensor but {CFG} says skip_connection is false")
    _need(t, {"W_skip": (d_in, d_in)} if skip else {}, wpath)
    _need(
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


# ---------------------------------------------------------------- export
def export_saelens(
    sae: SparseCoder, out: Path, model_name: str = "", context: int | None = None, dataset: str | None = None
) -> Path:
    """Write a clean SAELens v6 folder (no saelab keys). BatchTopK goes out as JumpReLU with its
    shared threshold, as SAELens stores it."""
    c, names = sae.cfg, type(sae).foreign
    _refuse_saelab_only(sae, "SAELens")
    if c.is_transcoder and names.saelens != "standard":
        raise UserError(
            f"SAELens stores ReLU transcoders (`transcoder`, `skip_transcoder`); this one is {c.arch}: "
            "export it to sparsify if it is TopK, or keep the saelab folder"
        )
    arch = names.saelens if not c.is_transcoder else SAELENS_TRANSCODERS[int(c.skip)]
    cfg = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name,
            "hook_name": c.hookpoint,
            "hook_head_index": None,
            "context_size": context,
            "prepend_bos": True,
            "dataset_path": dataset,
            "sae_lens_version": None,
            "saelab_version": __version__,
        },
    }
    if arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    if c.is_transcoder:  # SAELens' TranscoderConfig keeps these at the top level; it never centres the input
        cfg |= {"d_out": c.d_out, "hook_name_out": c.out_hookpoint, "apply_b_dec_to_input": False}
        cfg["metadata"]["hook_name_out"] = c.out_hookpoint
    renames = names.saelens_tensors  # gated: b_enc goes out as b_gate
    out = Path(out)
    write_tensors(out / SAELENS_WEIGHTS, {renames.get(k, k): v for k, v in sae.folded_state().items()})
    write_json(out / CFG, cfg)
    return out


def export_sparsify(sae: SparseCoder, out_root: Path, prefix: str = SPARSIFY_PREFIX) -> Path:
    """Write `out_root/<hookpoint relative to base_model>/{cfg.json, sae.safetensors}` as sparsify does."""
    c = sae.cfg
    _refuse_saelab_only(sae, "sparsify")
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


def _refuse_saelab_only(sae: SparseCoder, fmt: str) -> None:
    """A type neither SAELens nor sparsify has (ForeignNames.saelab_only): exporting it would write a
    folder no reader understands."""
    what = type(sae).foreign.saelab_only
    if what:
        raise UserError(
            f"{fmt} has no {what}: a --arch {sae.cfg.arch} dictionary cannot be exported; "
            f"keep the saelab folder (every saelab command reads it)"
        )
