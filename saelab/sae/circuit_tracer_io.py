"""`saelab export --format circuit-tracer REPLACEMENT --out DIR` and `saelab import DIR` of a circuit-tracer folder.

A saelab replacement folder (replacement.json + one transcoder folder per layer, or one CLT) converts to a
`CtSet` (foreign_circuit_tracer.py) and back, weights copied bit for bit (transposed where circuit-tracer's
orientation differs). Activations, as circuit-tracer holds them:

  saelab relu      -> no threshold (F.relu)          jumprelu  -> activation_function.threshold
  saelab batchtopk -> JumpReLU at its inference threshold (as SAELens does; imports back as jumprelu)
  saelab topk      -> `activation: topk`, `k` (PLT only), with a warning: circuit-tracer 0.5.0 loads it as
                      ReLU, its GitHub main as TopK from the hub only. circuit-tracer's TopK keeps the k largest
                      pre-activations without a ReLU, saelab's zeroes negative ones: the two agree on every
                      row with at least k positive pre-activations
  anything else (gated, matryoshka, codebook, a skip CLT, a topk CLT): refused, naming it.

The replacement manifest (replacement.json) is read and written by sae/replacement.py, as for a --layers run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..families import Family, family_for_name, family_named, family_of
from ..out_folder import check_writable, finish, hold, refuse_nonempty
from . import SaeConfig, SparseCoder, build_sae
from .folder import Provenance, open_sae, refuse_non_finite, save_sae
from .foreign_circuit_tracer import (
    NORMALIZED,
    PLT_KIND,
    CtLayer,
    CtSet,
    fold_norm,
    hook_of_site,
    read_ct,
    site_of_hook,
    write_ct,
)
from .replacement import LayerPlan, read_manifest, write_replacement

SIDES = ("feature_input_hook", "feature_output_hook")


# ---------------------------------------------------------------- export


def _activation(sae: SparseCoder, where: str) -> tuple[str, int | None]:
    arch = sae.cfg.arch
    if arch == "relu":
        return "relu", None
    if arch in ("jumprelu", "batchtopk"):
        return "jumprelu", None
    if arch == "topk":
        return "topk", int(sae.cfg.k)
    raise UserError(
        f"{where}: circuit-tracer has no {arch} transcoder (it holds relu, jumprelu and topk; batchtopk is "
        f"written as JumpReLU at its threshold)"
    )


def _one(values: list, what: str, where: Path):
    if len(set(values)) != 1:
        raise UserError(
            f"{where}: circuit-tracer holds one {what} for every layer; the layers have {sorted(set(values))}"
        )
    return values[0]


def plt_to_ct(src: Path, m: dict, family: Family) -> CtSet:
    ins, outs, acts, layers, name = [], [], [], [], ""
    for layer, rel in zip(m["layers"], m["dictionaries"], strict=True):
        f = open_sae(Path(src) / rel)
        sae = f.sae
        if not sae.cfg.is_transcoder:
            raise UserError(f"{f.path} is not a transcoder (no out_hookpoint): a PLT set holds transcoders")
        ins.append(hook_of_site(family, sae.cfg.hookpoint, layer, SIDES[0]))
        outs.append(hook_of_site(family, sae.cfg.out_hookpoint, layer, SIDES[1]))
        acts.append(_activation(sae, str(f.path)))
        t = sae.folded_state()
        layers.append(CtLayer(t["W_enc"].t(), t["b_enc"], t["W_dec"], t["b_dec"], t.get("threshold"), t.get("W_skip")))
        name = name or f.provenance.model_name
    act, k = _one(acts, "activation", src)
    if act == "topk":
        warnings.warn(
            "circuit-tracer 0.5.0 (PyPI) has no TopK and loads this set as ReLU; its GitHub main applies "
            "`activation: topk` only when it loads the set from the hub, a local folder still loads as ReLU "
            "(docs/research/circuits.md)",
            stacklevel=2,
        )
    if act != "jumprelu":
        for lay in layers:
            lay.threshold = None
    name = name or (m.get("model") or {}).get("name") or ""
    return CtSet(PLT_KIND, name, _one(ins, SIDES[0], src), _one(outs, SIDES[1], src), layers, act, k)


def export_circuit_tracer(src: Path, out: Path, overwrite: bool = False) -> Path:
    """Replacement folder `src` -> circuit-tracer folder `out` (everything read and checked first)."""
    src, out = Path(src), Path(out)
    m = read_manifest(src)
    family = family_named(m["family"])
    if list(m["layers"]) != list(range(len(m["layers"]))):
        raise UserError(
            f"{src}: circuit-tracer needs every layer from 0 (it asserts layers 0..L-1); this replacement "
            f"covers layers {m['layers']}"
        )
    check_writable(out)
    refuse_nonempty(out, overwrite)
    if m["kind"] == "plt":
        ct = plt_to_ct(src, m, family)
    else:
        from .circuit_tracer_clt import clt_to_ct

        ct = clt_to_ct(src, m, family)
    hold(out)  # the folder's lock: one writer at a time
    written = write_ct(ct, out)
    finish(out)
    return written


# ---------------------------------------------------------------- import


def mlp_norms(spec: str, family: Family, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(scale, shift) of each layer's MLP norm in model `spec`: (offset + weight, None) for an RMSNorm, (weight,
    bias) for a LayerNorm; what turns ln2.hook_normalized into the norm's output (fold_norm). Loads the model."""
    from ..models import load_model, module_at

    model = load_model(spec).model
    found = family_of(model)
    if found.name != family.name:
        raise UserError(f"--model {spec} is a {found.name} model; the circuit-tracer folder is for {family.name}")
    if len(model.get_submodule(found.blocks)) < n_layers:
        raise UserError(f"--model {spec} has fewer than the folder's {n_layers} layers")
    out = []
    for layer in range(n_layers):
        mod = module_at(model, found.mlp_in_site(layer))
        w = mod.weight.detach().float()
        if found.norm == "rms":
            out.append((w + found.norm_offset, None))
        else:
            bias = getattr(mod, "bias", None)
            out.append((w, bias.detach().float() if bias is not None else None))
    return out


def ct_to_plt(ct: CtSet, family: Family) -> list[SparseCoder]:
    arch = {"relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}[ct.activation]
    saes = []
    for layer, lay in enumerate(ct.layers):
        n, d_in = lay.W_enc.shape
        cfg = SaeConfig(
            arch=arch,
            d_in=d_in,
            d_sae=n,
            d_out=lay.b_dec.shape[0],
            hookpoint=site_of_hook(family, ct.input_hook, layer, SIDES[0]),
            out_hookpoint=site_of_hook(family, ct.output_hook, layer, SIDES[1]),
            k=ct.k,
            skip=lay.W_skip is not None,
        )
        sae = build_sae(cfg)
        t = {"W_enc": lay.W_enc.t().contiguous(), "b_enc": lay.b_enc, "W_dec": lay.W_dec, "b_dec": lay.b_dec}
        if lay.W_skip is not None:
            t["W_skip"] = lay.W_skip
        if lay.threshold is not None:
            t["threshold"] = lay.threshold
        sae.load_folded(t)
        saes.append(sae.eval())
    return saes


def ct_dictionaries(ct: CtSet, family: Family, model: str | None) -> tuple[CtSet, list[SparseCoder], list[str]]:
    """A CtSet's dictionaries -> (the set, folded when it reads ln2.hook_normalized and `model` gives the MLP
    norms; its dictionaries; their names: layer_{l} per PLT layer, or clt). Hooks checked before any work."""
    site_of_hook(family, ct.output_hook, 0, SIDES[1])  # a hook saelab cannot map: refused before any work
    if ct.input_hook == NORMALIZED and model:
        ct = fold_norm(ct, mlp_norms(model, family, ct.n_layers))
    site_of_hook(family, ct.input_hook, 0, SIDES[0])
    if ct.kind == PLT_KIND:
        return ct, ct_to_plt(ct, family), [f"layer_{i}" for i in range(ct.n_layers)]
    from .circuit_tracer_clt import ct_to_clt

    return ct, [ct_to_clt(ct, family)], ["clt"]


def import_circuit_tracer(
    src: Path, out: Path, model: str | None = None, context: int | None = None, overwrite: bool = False
) -> Path:
    """circuit-tracer folder `src` -> saelab replacement folder `out`: one SAE folder per layer (PLT) or one
    CLT folder, then replacement.json. Everything is read and checked before anything is written."""
    src = Path(src)
    origin = {"format": "circuit-tracer", "path": str(src)}
    return replacement_from_ct(read_ct(src), out, model, context, overwrite, origin)


def replacement_from_ct(
    ct: CtSet, out: Path, model: str | None, context: int | None, overwrite: bool, origin: dict
) -> Path:
    """A CtSet -> replacement folder `out` (`model`: the model spec to record, and whose MLP norms fold into a
    set reading ln2.hook_normalized; `origin`: what to record under imported_from)."""
    out = Path(out)
    name, spec = ct.model_name or model, model or ct.model_name
    if not name:
        raise UserError(f"{origin.get('path')}: config.yaml names no model_name; pass --model")
    family = family_for_name(name)
    check_writable(out)
    refuse_nonempty(out, overwrite)
    ct, saes, names = ct_dictionaries(ct, family, model)
    for n, sae in zip(names, saes, strict=True):
        refuse_non_finite(Path(origin.get("path", "")) / n, sae.state_dict())
    prov = Provenance(model_spec=spec, model_name=name, context=context or 1024)
    origin = origin | {"model_kind": ct.kind, "activation": ct.activation}
    hold(out)  # the folder's lock: one writer at a time
    for n, sae in zip(names, saes, strict=True):
        save_sae(sae, out / n, prov, {"imported_from": origin})
    layers = list(range(ct.n_layers))
    ins = [site_of_hook(family, ct.input_hook, i, SIDES[0]) for i in layers]
    outs = [site_of_hook(family, ct.output_hook, i, SIDES[1]) for i in layers]
    kind = "plt" if ct.kind == PLT_KIND else "clt"
    plan = LayerPlan(tuple(layers), family.name, len(layers), tuple(ins), tuple(outs))
    write_replacement(out, kind, plan, spec, name, [out / n for n in names])
    finish(out)
    return out
