"""The cross-layer transcoder's (clt.py) per-layer code and its sparse decode.

`encode_one_layer` selects one layer's latents (TopK or BatchTopK over that layer's n latents) with the
sparse-backward gather (latents.gather_preacts) and, when the layer has dead latents, picks its AuxK
latents from the same pre-activations (only one layer's [rows, n] pre-activations exist at a time).
`decode_layers` sums every source layer's embedding_bag over its decoder viewed [n, (L-l)*d] into the
[rows, L*d] output; `_Place` adds each source's part at its offset with a backward that hands every part
a view of the output gradient (no [rows, L*d] zeros per source, as slicing through autograd would make).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batchtopk import CANDIDATES_PER_K, batch_select
from .latents import Latents, gather_preacts, latents_of
from .reductions import LOCAL


def encode_one_layer(sae, l: int, x: torch.Tensor, dead: torch.Tensor | None):
    """-> (layer l's Latents, local ids; its AuxK Latents or None) of scaled inputs x [rows, d_site_in].
    `dead` [n] bool: the layer's dead latents (None: no AuxK)."""
    n, k, rows_n = sae.n_per_layer, sae.cfg.k, x.shape[0]
    bias, W = sae.b_enc[l * n : (l + 1) * n], sae.W_enc[l]
    grad = torch.is_grad_enabled()
    with torch.no_grad():
        pre = torch.addmm(bias, x, W)  # [rows, n]
    if sae.sparsity == "topk":
        with torch.no_grad():
            cols = pre.topk(k, dim=1, sorted=False).indices  # [rows, k]
        if grad:
            rows = torch.arange(rows_n, device=x.device).repeat_interleave(k)
            vals = gather_preacts(x, W, bias, pre, rows, cols.reshape(-1)).relu().view(rows_n, k)
        else:
            vals = pre.gather(1, cols).relu_()
        lat = Latents(vals, cols, None, rows_n, n)
    else:  # batchtopk
        with torch.no_grad():
            if sae.training:
                r = LOCAL
                rows, cols, kept = batch_select(pre, k * rows_n, CANDIDATES_PER_K * k, r.top_values, r.any, rows_n)
                if l == 0:
                    sae.threshold_steps += 1
                if kept.numel():  # running mean of the smallest kept activation: the inference threshold
                    sae.threshold[l] += (kept.min() - sae.threshold[l]) / sae.threshold_steps.clamp(1, 1000)
            else:
                rows, cols = (pre > sae.threshold[l]).nonzero(as_tuple=True)
        vals = gather_preacts(x, W, bias, pre, rows, cols).relu() if grad else pre[rows, cols].relu()
        lat = latents_of(vals, rows, cols, rows_n, n)
    aux = None
    if dead is not None and bool(dead.any()):
        dcols = dead.nonzero().squeeze(1)
        k_aux = min(sae.cfg.aux_k or sae.d_site_in // 2, len(dcols))
        with torch.no_grad():
            idx = dcols[pre[:, dcols].topk(k_aux, dim=1, sorted=False).indices]  # [rows, k_aux]
        arows = torch.arange(rows_n, device=x.device).repeat_interleave(k_aux)
        avals = gather_preacts(x, W, bias, pre, arows, idx.reshape(-1)).relu().view(rows_n, k_aux)
        aux = Latents(avals, idx, None, rows_n, n)
    return lat, aux


class _Place(torch.autograd.Function):
    """out[:, off_i : off_i + w_i] += parts[i] into a [rows, width] zero tensor; the backward is views."""

    @staticmethod
    def forward(ctx, width, offsets, *parts):
        out = parts[0].new_zeros(parts[0].shape[0], width)
        for off, p in zip(offsets, parts):
            out[:, off : off + p.shape[1]] += p
        ctx.spans = [(off, p.shape[1]) for off, p in zip(offsets, parts)]
        return out

    @staticmethod
    def backward(ctx, g):
        return (None, None, *[g[:, off : off + w] for off, w in ctx.spans])


def _bag(lat: Latents, W: torch.Tensor) -> torch.Tensor:
    idx, vals = lat.indices.contiguous(), lat.values.contiguous()
    if lat.offsets is None:
        return F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum")
    return F.embedding_bag(idx, W, lat.offsets, per_sample_weights=vals, mode="sum")


def decode_layers(sae, codes: list, weights: list | None = None, width: int | None = None) -> torch.Tensor:
    """sum over source layers l of codes[l] through W_dec[l] -> [rows, L*d_out] (training space, no bias).
    codes[l] None: layer l adds nothing. `weights` / `width`: one code through one [n, width] matrix."""
    if weights is not None:
        return _bag(codes[0], weights[0])
    d, L = sae.d_site_out, sae.n_layers
    parts, offsets = [], []
    for l, lat in enumerate(codes):
        if lat is not None:
            parts.append(_bag(lat, sae.W_dec[l].view(sae.n_per_layer, (L - l) * d)))
            offsets.append(l * d)
    if not parts:
        return sae.b_dec.new_zeros(next((c.n_rows for c in codes if c is not None), 0), L * d)
    return _Place.apply(L * d, offsets, *parts)


def merge_layers(codes: list[Latents], n: int) -> Latents:
    """Per-layer Latents (local ids) -> one Latents over global ids g = l*n + j (layer-major per row)."""
    L, rows_n = len(codes), codes[0].n_rows
    if all(c.offsets is None for c in codes):
        vals = torch.cat([c.values for c in codes], 1)
        idx = torch.cat([c.indices + l * n for l, c in enumerate(codes)], 1)
        return Latents(vals, idx, None, rows_n, L * n)
    flat = [c.flat() for c in codes]
    rows = torch.cat([f[0] for f in flat])
    idx = torch.cat([f[1] + l * n for l, f in enumerate(flat)])
    vals = torch.cat([f[2] for f in flat])
    order = rows.argsort(stable=True)
    return latents_of(vals[order], rows[order], idx[order], rows_n, L * n)


def split_layers(lat: Latents, L: int, n: int) -> list[Latents]:
    """Global Latents -> per-layer Latents with local ids (the inverse of merge_layers)."""
    if lat.offsets is None and lat.indices.shape[1] % L == 0:
        k = lat.indices.shape[1] // L
        idx = lat.indices.view(lat.n_rows, L, k)
        layer = torch.arange(L, device=idx.device).view(1, L, 1)
        if bool((idx // n == layer).all()):  # layer-major blocks of k (merge_layers of a TopK code)
            vals = lat.values.view(lat.n_rows, L, k)
            return [Latents(vals[:, l], idx[:, l] - l * n, None, lat.n_rows, n) for l in range(L)]
    rows, idx, vals = lat.flat()
    layer = idx // n
    out = []
    for l in range(L):
        m = layer == l
        out.append(latents_of(vals[m], rows[m], idx[m] - l * n, lat.n_rows, n))
    return out
