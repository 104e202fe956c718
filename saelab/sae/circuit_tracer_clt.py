"""A saelab cross-layer transcoder (sae/clt.py) to and from circuit-tracer's cross_layer_transcoder layout.

Both lay a CLT out the same way (foreign_circuit_tracer.py): layer l's encoder, its biases, and its decoder
W_dec_l [n, L - l, d] into target layers l..L-1. What differs: circuit-tracer's encoder is [n, d] per layer
(ours [d, n]) and its biases are per layer (ours concatenated). Sparsity: circuit-tracer's CLTs are ReLU or
JumpReLU with one threshold per latent; saelab's are TopK or BatchTopK per layer. A BatchTopK CLT at
inference keeps pre > threshold_l (one threshold per layer, >= 0) and is exactly a JumpReLU whose thresholds
are that value; a TopK CLT has no circuit-tracer form, and a circuit-tracer CLT is read only when its
thresholds are one value per layer (as an exported saelab CLT's are): per-latent thresholds or ReLU would need
a JumpReLU / ReLU sparsity in sae/clt.py. `k` (BatchTopK's training target, unused at inference) travels as
config.yaml's `k`, which circuit-tracer's load_clt ignores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..families import Family
from . import SaeConfig, build_sae
from .clt import CrossLayerTranscoder
from .crosscoder import SEP
from .folder import open_sae
from .foreign_circuit_tracer import CLT_KIND, CtLayer, CtSet, hook_of_site, site_of_hook

SIDES = ("feature_input_hook", "feature_output_hook")


def clt_to_ct(src: Path, m: dict, family: Family) -> CtSet:
    """The one CLT of replacement folder `src` (manifest `m`) -> a cross_layer_transcoder CtSet."""
    f = open_sae(Path(src) / m["dictionaries"][0])
    sae = f.sae
    if not isinstance(sae, CrossLayerTranscoder):
        raise UserError(f"{f.path} is a {sae.cfg.arch} dictionary, not a CLT (--arch clt), as {src} says")
    if sae.sparsity != "batchtopk":
        raise UserError(
            f"{f.path}: circuit-tracer's cross-layer transcoders are ReLU or JumpReLU; a {sae.sparsity} CLT has no "
            f"form there (train with --clt-sparsity batchtopk: it is a JumpReLU at inference)"
        )
    L, n, d_out = sae.n_layers, sae.n_per_layer, sae.d_site_out
    hooks = []
    for side, sites in zip(SIDES, (sae.cfg.hookpoint, sae.cfg.out_hookpoint), strict=True):
        names = {hook_of_site(family, s, l, side) for l, s in enumerate(sites.split(SEP))}
        if len(names) != 1:
            raise UserError(f"{f.path}: circuit-tracer holds one {side} for every layer; the layers have {names}")
        hooks.append(names.pop())
    t = sae.folded_state()
    b_enc, b_dec, thr = t["b_enc"].view(L, n), t["b_dec"].view(L, d_out), t["threshold"].view(L, n)
    layers = [CtLayer(t["W_enc"][l].t(), b_enc[l], t[f"W_dec_{l}"], b_dec[l], thr[l]) for l in range(L)]
    name = f.provenance.model_name or (m.get("model") or {}).get("name") or ""
    return CtSet(CLT_KIND, name, hooks[0], hooks[1], layers, "jumprelu", extra={"k": int(sae.cfg.k)})


def ct_to_clt(ct: CtSet, family: Family) -> CrossLayerTranscoder:
    """A cross_layer_transcoder CtSet -> a BatchTopK saelab CLT (see the module docstring for what is refused)."""
    if ct.activation != "jumprelu":
        raise UserError(
            f"a {ct.activation} cross-layer transcoder has no saelab form yet: saelab's CLTs are TopK or BatchTopK "
            f"(a JumpReLU with one threshold per layer)"
        )
    for l, lay in enumerate(ct.layers):
        if not bool((lay.threshold == lay.threshold[0]).all()) or float(lay.threshold[0]) < 0:
            raise UserError(
                f"layer {l}: the CLT's JumpReLU thresholds differ between latents (or are negative); saelab's CLT "
                f"holds one threshold per layer (BatchTopK), so it cannot take per-latent thresholds yet"
            )
    L = ct.n_layers
    n, d_in = ct.layers[0].W_enc.shape
    d_out = ct.layers[0].b_dec.shape[0]
    k = ct.extra.get("k")
    cfg = SaeConfig(
        arch="clt",
        d_in=L * d_in,
        d_sae=L * n,
        d_out=L * d_out,
        hookpoint=SEP.join(site_of_hook(family, ct.input_hook, l, SIDES[0]) for l in range(L)),
        out_hookpoint=SEP.join(site_of_hook(family, ct.output_hook, l, SIDES[1]) for l in range(L)),
        k=int(k) if isinstance(k, int) and 1 <= k <= L * n else 1,  # BatchTopK's training target; unused here
        extra={"clt_sparsity": "batchtopk"},
    )
    sae = build_sae(cfg)
    t = {
        "W_enc": torch.stack([lay.W_enc.t() for lay in ct.layers]),
        "b_enc": torch.cat([lay.b_enc for lay in ct.layers]),
        "b_dec": torch.cat([lay.b_dec for lay in ct.layers]),
        "threshold": torch.cat([lay.threshold for lay in ct.layers]),
    }
    t |= {f"W_dec_{l}": lay.W_dec for l, lay in enumerate(ct.layers)}
    sae.load_folded(t)
    return sae.eval()
