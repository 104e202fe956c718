"""circuit-tracer's on-disk layout (safety-research/circuit-tracer), read and written exactly.

Why: circuit-tracer builds attribution graphs from a replacement model; a saelab PLT set or CLT written in
its layout loads there unchanged (`ReplacementModel.from_pretrained(model, "/path/to/folder")`), and its
public transcoders load here. The format, with the circuit-tracer files it comes from, is in
docs/research/circuits.md ("circuit-tracer's formats"). In short, a folder with `config.yaml`:

  model_kind: transcoder_set | cross_layer_transcoder;  model_name: the HF model;
  feature_input_hook / feature_output_hook: TransformerLens hook names without `blocks.L.`;
  activation: topk + k (transcoder sets only; otherwise a threshold tensor means JumpReLU, none ReLU)

transcoder_set: `layer_{l}.safetensors` per layer l = 0..L-1 (every layer, circuit-tracer asserts it):
  W_enc [n, d], W_dec [n, d], b_enc [n], b_dec [d], optional W_skip [d, d] (skip = x @ W_skip.T),
  optional `activation_function.threshold` [n] (JumpReLU: pre * (pre > threshold)).
  encode = act(x @ W_enc.T + b_enc); decode = acts @ W_dec + b_dec (+ skip).
cross_layer_transcoder: `W_enc_{l}.safetensors` holding W_enc_{l} [n, d], b_enc_{l} [n], b_dec_{l} [d],
  optional threshold_{l} [n]; `W_dec_{l}.safetensors` holding W_dec_{l} [n, L - l, d]: source layer l's
  decoder into target layers l..L-1. out[t] = sum_{s <= t} acts_s @ W_dec_s[:, t - s] + b_dec_t. No skip
  (load_clt never reads one) and no TopK (only relu / jump_relu).

This module only moves tensors between files and a `CtSet`; sae/circuit_tracer_io.py converts a CtSet to
and from saelab dictionaries and replacement folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..families import Family
from ..storage import read_tensors, write_tensors

CT_CONFIG = "config.yaml"
PLT_KIND, CLT_KIND = "transcoder_set", "cross_layer_transcoder"
THRESHOLD = "activation_function.threshold"  # the JumpReLU threshold's key in a PLT layer file

# circuit-tracer hook (TransformerLens name, relative to blocks.L) -> the saelab kind it is, per side.
# mlp.hook_in: what the MLP reads (its norm's output, with the norm's weight); hook_resid_mid: what the norm
# reads; hook_mlp_out: what is added to the residual stream (after Gemma 2's post-MLP norm); mlp.hook_out: the
# MLP module's own output (before that norm; the same tensor as hook_mlp_out in a Llama block).
INPUT_HOOKS = {"mlp.hook_in": "mlp_in", "hook_resid_mid": "mlp_in:input"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out_prenorm|mlp_out"}
NORMALIZED = "ln2.hook_normalized"  # the MLP norm's output BEFORE its weight: foldable (fold_norm below)
UNMAPPED = {
    NORMALIZED: "the MLP norm's output BEFORE its weight (x / rms(x)); saelab's sites are module outputs, and "
    "the norm's weighted output (mlp.hook_in) differs from it by the norm's scale. Pass --model (a model whose "
    "MLP norm weights can be read) to fold the scale into the encoders",
}


@dataclass
class CtLayer:
    """One layer's tensors in circuit-tracer's orientation (see the module docstring)."""

    W_enc: torch.Tensor  # [n, d_in]
    b_enc: torch.Tensor  # [n]
    W_dec: torch.Tensor  # PLT [n, d_out]; CLT [n, L - l, d_out]
    b_dec: torch.Tensor  # [d_out]
    threshold: torch.Tensor | None = None  # [n] JumpReLU
    W_skip: torch.Tensor | None = None  # [d_out, d_in] (PLT only)


@dataclass
class CtSet:
    """A circuit-tracer folder in memory: kind, model, hooks, activation and the per-layer tensors."""

    kind: str  # PLT_KIND | CLT_KIND
    model_name: str
    input_hook: str
    output_hook: str
    layers: list[CtLayer]
    activation: str = "relu"  # relu | jumprelu | topk
    k: int | None = None
    extra: dict = field(default_factory=dict)  # other config.yaml keys, kept as read

    @property
    def n_layers(self) -> int:
        return len(self.layers)


# ---------------------------------------------------------------- hooks <-> saelab sites


def site_of_hook(family: Family, hook: str, layer: int, side: str) -> str:
    """circuit-tracer's hook at block `layer` -> the saelab hookpoint; a UserError for a hook saelab has no
    site for (side: 'feature_input_hook' | 'feature_output_hook')."""
    table = INPUT_HOOKS if side == "feature_input_hook" else OUTPUT_HOOKS
    if hook in UNMAPPED:
        raise UserError(f"{side} {hook!r}: saelab has no site for {UNMAPPED[hook]}")
    if hook not in table:
        raise UserError(
            f"{side} {hook!r} is not a hook saelab can map (known: {', '.join(table)}); a replacement "
            f"model reads the MLP's input and writes its output"
        )
    kinds = table[hook].split("|")
    kind = next((k for k in kinds if k.removesuffix(":input") in family.kinds.values()), kinds[-1])
    suffix = ":input" if kind.endswith(":input") else ""
    return family.site(layer, kind.removesuffix(":input")) + suffix


def hook_of_site(family: Family, site: str, layer: int, side: str) -> str:
    """The inverse: a saelab hookpoint of block `layer` -> circuit-tracer's hook name (Llama's MLP output
    as mlp.hook_out, the name the Llama releases and circuit-tracer's Qwen mapping use)."""
    table = INPUT_HOOKS if side == "feature_input_hook" else OUTPUT_HOOKS
    order = ["mlp.hook_out", "hook_mlp_out"] if side == "feature_output_hook" else list(table)
    for hook in order:
        if site_of_hook(family, hook, layer, side) == site:
            return hook
    raise UserError(
        f"{site} (layer {layer}) is not a site circuit-tracer names ({side} must be one of {', '.join(table)} "
        f"for {family.name} models: {', '.join(site_of_hook(family, h, layer, side) for h in table)})"
    )


def fold_norm(ct: CtSet, norms: list[tuple[torch.Tensor, torch.Tensor | None]]) -> CtSet:
    """A set reading ln2.hook_normalized, u = (y - shift) / scale with y the MLP norm's output (saelab's
    mlp_in site) and (scale, shift) that norm's (offset + weight, bias) per layer, as one reading y:
    u @ W.T = y @ (W / scale).T - (W / scale) @ shift, into the encoder (and the skip, which reads u too)."""
    layers = []
    for i, (lay, (scale, shift)) in enumerate(zip(ct.layers, norms, strict=True)):
        if not bool((scale.abs() > 0).all()):
            raise UserError(f"layer {i}: the MLP norm's scale has a zero entry; its input cannot be recovered")
        W_enc, b_enc, W_skip, b_dec = lay.W_enc / scale, lay.b_enc, lay.W_skip, lay.b_dec
        if W_skip is not None:
            W_skip = W_skip / scale
        if shift is not None:  # LayerNorm's bias; an RMSNorm has none (biases then copied bit for bit)
            b_enc = b_enc - W_enc @ shift
            b_dec = b_dec - W_skip @ shift if W_skip is not None else b_dec
        layers.append(CtLayer(W_enc, b_enc, lay.W_dec, b_dec, lay.threshold, W_skip))
    return CtSet(ct.kind, ct.model_name, "mlp.hook_in", ct.output_hook, layers, ct.activation, ct.k, ct.extra)


# ---------------------------------------------------------------- read


def _yaml():
    import yaml

    return yaml


def read_ct_config(folder: Path) -> dict:
    path = Path(folder) / CT_CONFIG
    if not path.exists():
        raise UserError(f"{folder} has no {CT_CONFIG}: not a circuit-tracer folder")
    try:
        cfg = _yaml().safe_load(path.read_text())
    except Exception as e:  # noqa: BLE001 - any YAML error is the file's fault
        raise UserError(f"{path} is not readable YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{path} must hold a mapping, not {type(cfg).__name__}")
    for key in ("model_kind", "feature_input_hook", "feature_output_hook"):
        if key not in cfg:
            raise UserError(f"{path} lacks {key!r}")
    if cfg["model_kind"] not in (PLT_KIND, CLT_KIND):
        raise UserError(f"{path}: unknown model_kind {cfg['model_kind']!r} (known: {PLT_KIND}, {CLT_KIND})")
    return cfg


def _numbered(folder: Path, prefix: str) -> list[int]:
    """Layer numbers of `prefix{l}.safetensors` in folder; they must be 0..L-1 (circuit-tracer's rule)."""
    pat = re.compile(rf"^{re.escape(prefix)}(\d+)\.safetensors$")
    found = sorted(int(m.group(1)) for p in Path(folder).iterdir() if (m := pat.match(p.name)))
    if not found:
        raise UserError(f"{folder} has no {prefix}<layer>.safetensors file")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise UserError(f"{folder}: {prefix}{missing[0]}.safetensors is missing (layers must be 0..{max(found)})")
    return found


def _need(t: dict, shapes: dict, path: Path) -> None:
    for name, shape in shapes.items():
        if name not in t:
            raise UserError(f"{path} lacks tensor {name!r} (has {', '.join(sorted(t))})")
        if tuple(t[name].shape) != shape:
            raise UserError(f"{path}: {name} has shape {tuple(t[name].shape)}, expected {shape}")


def _plt_files(folder: Path, cfg: dict) -> list[Path]:
    """The layer files: config.yaml's `transcoders` list (local paths, relative to the folder) or layer_*."""
    listed = cfg.get("transcoders")
    if listed is None:
        return [folder / f"layer_{i}.safetensors" for i in _numbered(folder, "layer_")]
    out = []
    for i, p in enumerate(listed):
        p = str(p)
        if p.startswith("hf://"):
            raise UserError(
                f"{folder / CT_CONFIG}: layer {i} is on the hub ({p}); download the files and list local "
                f"paths (or use `saelab pull`)"
            )
        path = Path(p) if Path(p).is_absolute() else folder / p
        if not path.exists():
            raise UserError(f"{folder / CT_CONFIG}: layer {i}'s file {path} does not exist")
        if path.suffix != ".safetensors":
            raise UserError(f"{path}: only safetensors layer files are read (Gemma Scope .npz: `saelab pull`)")
        out.append(path)
    return out


def read_plt(folder: Path, cfg: dict) -> list[CtLayer]:
    layers = []
    for path in _plt_files(folder, cfg):
        t = {k: v.float() for k, v in read_tensors(path).items()}
        if "W_enc" not in t or "W_dec" not in t:
            raise UserError(f"{path} lacks W_enc / W_dec (has {', '.join(sorted(t))})")
        n, d_in = t["W_enc"].shape
        d_out = t["W_dec"].shape[-1]
        shapes = {"W_dec": (n, d_out), "b_enc": (n,), "b_dec": (d_out,)}
        if "W_skip" in t:
            shapes["W_skip"] = (d_out, d_in)
        if THRESHOLD in t:
            shapes[THRESHOLD] = (n,)
        _need(t, shapes, path)
        layers.append(CtLayer(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], t.get(THRESHOLD), t.get("W_skip")))
    return layers


def read_clt(folder: Path) -> list[CtLayer]:
    enc = _numbered(folder, "W_enc_")
    L = len(enc)
    layers = []
    for i in range(L):
        epath, dpath = folder / f"W_enc_{i}.safetensors", folder / f"W_dec_{i}.safetensors"
        if not dpath.exists():
            raise UserError(f"{folder}: W_dec_{i}.safetensors is missing (one per W_enc_{i}.safetensors)")
        e = {k: v.float() for k, v in read_tensors(epath).items()}
        d = {k: v.float() for k, v in read_tensors(dpath).items()}
        if f"W_enc_{i}" not in e or f"W_dec_{i}" not in d:
            raise UserError(f"{epath} / {dpath} lack W_enc_{i} / W_dec_{i}")
        n, d_in = e[f"W_enc_{i}"].shape
        d_out = d[f"W_dec_{i}"].shape[-1]
        shapes = {f"b_enc_{i}": (n,), f"b_dec_{i}": (d_out,)}
        if f"threshold_{i}" in e or (i and layers[0].threshold is not None):
            shapes[f"threshold_{i}"] = (n,)
        _need(e, shapes, epath)
        _need(d, {f"W_dec_{i}": (n, L - i, d_out)}, dpath)
        if layers and (n, d_in) != tuple(layers[0].W_enc.shape):
            raise UserError(f"{epath}: W_enc_{i} has shape {(n, d_in)}, layer 0's {tuple(layers[0].W_enc.shape)}")
        layers.append(
            CtLayer(e[f"W_enc_{i}"], e[f"b_enc_{i}"], d[f"W_dec_{i}"], e[f"b_dec_{i}"], e.get(f"threshold_{i}"))
        )
    return layers


def read_ct(folder: Path) -> CtSet:
    """A circuit-tracer folder -> CtSet; every file and shape checked (one UserError naming the file)."""
    folder = Path(folder)
    cfg = read_ct_config(folder)
    kind = cfg["model_kind"]
    layers = read_plt(folder, cfg) if kind == PLT_KIND else read_clt(folder)
    d = tuple(layers[0].W_enc.shape)
    for i, lay in enumerate(layers):
        if tuple(lay.W_enc.shape) != d or (lay.threshold is None) != (layers[0].threshold is None):
            raise UserError(
                f"{folder}: layer {i} disagrees with layer 0 (W_enc {tuple(lay.W_enc.shape)} vs {d}, "
                f"or a threshold in one but not the other)"
            )
    act = str(cfg.get("activation") or ("jumprelu" if layers[0].threshold is not None else "relu")).lower()
    act = {"jump_relu": "jumprelu"}.get(act, act)
    if act not in ("relu", "jumprelu", "topk"):
        raise UserError(f"{folder / CT_CONFIG}: activation {act!r} is not one saelab reads (relu, jumprelu, topk)")
    if act == "jumprelu" and layers[0].threshold is None:
        raise UserError(f"{folder / CT_CONFIG}: activation jumprelu but the layer files hold no threshold")
    k = cfg.get("k")
    if act == "topk" and (not isinstance(k, int) or k < 1):
        raise UserError(f"{folder / CT_CONFIG}: activation topk needs a positive integer k (got {k!r})")
    if act == "topk" and kind == CLT_KIND:
        raise UserError(f"{folder / CT_CONFIG}: circuit-tracer's cross-layer transcoders are relu or jump_relu")
    own = ("model_kind", "model_name", "activation") + (("k",) if kind == PLT_KIND else ())  # a CLT's k: saelab's
    rest = {k2: v for k2, v in cfg.items() if k2 not in own}
    return CtSet(
        kind, str(cfg.get("model_name") or ""), cfg["feature_input_hook"], cfg["feature_output_hook"],
        layers, act, k if act == "topk" else None, rest,
    )  # fmt: skip


# ---------------------------------------------------------------- write


def write_ct(ct: CtSet, folder: Path) -> Path:
    """Write `ct` in circuit-tracer's layout (config.yaml last, so a folder with one is complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, lay in enumerate(ct.layers):
        c = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
        if ct.kind == PLT_KIND:
            t = {"W_enc": c(lay.W_enc), "W_dec": c(lay.W_dec), "b_enc": c(lay.b_enc), "b_dec": c(lay.b_dec)}
            if lay.threshold is not None:
                t[THRESHOLD] = c(lay.threshold)
            if lay.W_skip is not None:
                t["W_skip"] = c(lay.W_skip)
            write_tensors(folder / f"layer_{i}.safetensors", t)
        else:
            t = {f"W_enc_{i}": c(lay.W_enc), f"b_enc_{i}": c(lay.b_enc), f"b_dec_{i}": c(lay.b_dec)}
            if lay.threshold is not None:
                t[f"threshold_{i}"] = c(lay.threshold)
            write_tensors(folder / f"W_enc_{i}.safetensors", t)
            write_tensors(folder / f"W_dec_{i}.safetensors", {f"W_dec_{i}": c(lay.W_dec)})
    cfg = {
        "model_kind": ct.kind,
        "model_name": ct.model_name,
        "feature_input_hook": ct.input_hook,
        "feature_output_hook": ct.output_hook,
    }
    if ct.activation == "topk":
        cfg |= {"activation": "topk", "k": int(ct.k)}
    cfg |= ct.extra
    tmp = folder / (CT_CONFIG + ".tmp")
    tmp.write_text(_yaml().safe_dump(cfg, sort_keys=False))
    tmp.replace(folder / CT_CONFIG)
    return folder
