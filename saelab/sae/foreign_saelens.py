"""Read and write SAELens folders (v5 and v6): `cfg.json` + `sae_weights.safetensors` (foreign.py finds and
dispatches; the shared file names and checks are in foreign_layout.py).

  tensors  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] (jumprelu);
           gated: b_gate (our b_enc), r_mag, b_mag [d_sae]; skip_transcoder: W_skip [d_out, d_in]
  cfg      architecture standard | topk | jumprelu | gated | transcoder | skip_transcoder (ReLU; d_out,
           hook_name_out at the top level, input never centred) (v5: standard + activation_fn_str "topk" and
           activation_fn_kwargs.k), d_in, d_sae, dtype, apply_b_dec_to_input, normalize_activations,
           k (topk), rescale_acts_by_decoder_norm (topk, v6), hook_name / model_name / context_size
           either at top level (v5) or under `metadata` (v6).

Conversions that are not a plain copy (all exact as functions, see tests/test_interop.py):
  apply_b_dec_to_input=false -> b_enc' = b_enc + b_dec @ W_enc (we always centre by b_dec);
  normalize_activations=expected_average_only_in with a known factor s -> folded as SAELens
  folds it (W_enc*s, W_dec/s, b_dec/s); rescale_acts_by_decoder_norm -> folded into W_enc, b_enc, W_dec.
TransformerLens hook names (what most releases use) become our module names (`tl_to_module`).
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..families import family_for_name
from ..storage import read_json, read_tensors, write_json, write_tensors
from .base import SaeConfig, SparseCoder
from .cfg_fields import cfg_int, need_object
from .foreign_layout import (
    SAELENS_TRANSCODERS,
    SAELENS_WEIGHTS,
    SPARSIFY_PREFIX,
    f32,
    need_tensors,
    refuse_saelab_only,
)
from .layout import CFG
from .registry import ARCHITECTURES, build_sae


def saelens_meta(cfg: dict, path: Path | str = CFG) -> dict:
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
    meta = dict(need_object(path, cfg.get("metadata"), "metadata", optional=True))
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
    k = cfg.get("k") or need_object(path, cfg.get("activation_fn_kwargs"), "activation_fn_kwargs", True).get("k")
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
        if isinstance(k, float) and not k.is_integer():
            raise UserError(f"{path}: k={k} is not an integer; fractional k (batchtopk) is not supported")
        return readers[name], cfg_int(path, {"k": k}, "k")
    return readers[name], None


def load_saelens(folder: Path, norm_scaling_factor: float | None, prefix: str) -> tuple[SparseCoder, dict]:
    path = folder / CFG
    cfg = need_object(path, read_json(path))
    arch, k = _saelens_arch(cfg, path)
    lens_arch = ARCHITECTURES[arch].foreign.saelens  # the SAELens form the quirks below belong to
    meta = saelens_meta(cfg, path)
    if cfg.get("reshape_activations", "none") not in ("none", None) or meta.get("hook_head_index") is not None:
        raise UserError(f"{path}: hook_z reshaping / per-head SAEs are not supported")
    d_in, d_sae = cfg_int(path, cfg, "d_in"), cfg_int(path, cfg, "d_sae")
    d_out = cfg_int(path, cfg, "d_out", default=d_in)
    cfg_int(path, meta, "context_size", "metadata.context_size", 0, minimum=0)
    if not meta.get("hook_name"):
        raise UserError(f"{path} names no hook_name (neither metadata.hook_name nor top-level hook_name)")
    model_name = meta.get("model_name")  # the family of the TransformerLens hook names
    hook = tl_to_module(meta["hook_name"], prefix, model_name)
    t = f32(read_tensors(folder / SAELENS_WEIGHTS))
    wpath = folder / SAELENS_WEIGHTS
    for ours, theirs in ARCHITECTURES[arch].foreign.saelens_tensors.items():  # gated: b_gate is our b_enc
        if theirs in t:
            t[ours] = t.pop(theirs)
    need_tensors(t, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}, wpath)
    if lens_arch == "jumprelu":
        if "threshold" not in t and "log_threshold" in t:
            t["threshold"] = t.pop("log_threshold").exp()
        need_tensors(t, {"threshold": (d_sae,)}, wpath)
    if lens_arch == "gated":
        need_tensors(t, {"r_mag": (d_sae,), "b_mag": (d_sae,)}, wpath)
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
        need_tensors(t, {"W_skip": (d_out, d_in)}, wpath)
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
    need_tensors(t, {n: tuple(v.shape) for n, v in extra.items()}, wpath)
    extra |= {"W_skip": None} if skip else {}
    sae.load_folded({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec} | {n: t[n] for n in extra})
    return sae, meta


def export_saelens(
    sae: SparseCoder, out: Path, model_name: str = "", context: int | None = None, dataset: str | None = None
) -> Path:
    """Write a clean SAELens v6 folder (no saelab keys). BatchTopK goes out as JumpReLU with its
    shared threshold, as SAELens stores it."""
    c, names = sae.cfg, type(sae).foreign
    refuse_saelab_only(sae, "SAELens")
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
