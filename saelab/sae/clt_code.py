"""The cross-layer transcoder's (clt.py) per-layer code and its sparse decode.

`encode_one_layer` selects one layer's latents (TopK or BatchTopK over that layer's n latents) with the
sparse-backward gather (latents.gather_preacts) and, when the layer has dead latents, picks its AuxK
latents from the same pre-activations (only one layer's [rows, n] pre-activations exist at a time).
`decode_layers` sums every source layer's embedding_bag over its decoder viewed [(L-l)*n, d] into a
target-major [L, rows, d] output; `_AddInto` adds each source's part in place with a backward that hands the
part a view of the output gradient (no [L, rows, d] zeros per source, as slicing through autograd makes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batchtopk import CANDIDATES_PER_K, batch_select
from .clt_kernels import block_decode
from .latents import Latents, gather_preacts, latents_of

# A layer's AuxK latents (default): 2k. The SAE default d_in / 2 (Gao et al. 2024) would decode 9x the
# main code's latents at k 32 on d 576 through every later layer: a step with 1/7 of the latents dead
# took 113 s against 70 s without (30 layers x 1,024 latents, 4,096 rows, the shared 2-core CPU).
AUX_K_PER_K = 2


def encode_one_layer(sae, l: int, x: torch.Tensor, dead: torch.Tensor | None):
    """-> (layer l's Latents, local ids; its AuxK Latents or None) of scaled inputs x [rows, d_site_in].
    `dead` [n] bool: the layer's dead latents (None: no AuxK)."""
    n, k, rows_n = sae.n_per_layer, sae.cfg.k, x.shape[0]
    bias, W = sae.b_enc[l * n : (l + 1) * n], sae.W_enc[l]
    grad = torch.is_grad_enabled()
    # `r`: one process, or (--distributed latents) this rank's slice of every layer (train/sharded_saes.py):
    # the selections and dead-latent counts below then span the layer's latents on every rank
    r = sae.reductions
    with torch.no_grad():
        pre = torch.addmm(bias, x, W)  # [rows, n]
    if sae.sparsity == "topk":
        with torch.no_grad():
            pick = r.row_topk(pre, k)  # [rows, k] local ids (a latent slice: its share of the layer's top-k)
        if grad:
            vals = gather_preacts(x, W, bias, pre, pick.row_ids(), pick.cols.reshape(-1)).relu()
        else:
            vals = pick.take(pre).relu_()
        lat = pick.latents(vals, pick.cols, rows_n, n)
    else:  # batchtopk
        with torch.no_grad():
            if sae.training:
                rows, cols, kept = batch_select(pre, k * rows_n, CANDIDATES_PER_K * k, r.top_values, r.any, rows_n)
                if l == 0:
                    sae.threshold_steps += 1
                lo = r.min(kept.min() if kept.numel() else pre.new_tensor(float("inf")))
                if torch.isfinite(lo):  # running mean of the smallest kept activation: the inference threshold
                    sae.threshold[l] += (lo - sae.threshold[l]) / sae.threshold_steps.clamp(1, 1000)
            else:
                rows, cols = (pre > sae.threshold[l]).nonzero(as_tuple=True)
        vals = gather_preacts(x, W, bias, pre, rows, cols).relu() if grad else pre[rows, cols].relu()
        lat = latents_of(vals, rows, cols, rows_n, n)
    aux = None
    n_dead = r.latent_total(int(dead.sum())) if dead is not None else 0  # over every rank: all take one branch
    if n_dead:
        dcols = dead.nonzero().squeeze(1)
        k_aux = min(sae.cfg.aux_k or AUX_K_PER_K * k, sae.d_site_in // 2, n_dead)
        with torch.no_grad():
            pick = r.row_topk(pre[:, dcols], k_aux)
        idx = dcols[pick.cols]  # [rows, k_aux] (a latent slice: its share, flat)
        avals = gather_preacts(x, W, bias, pre, pick.row_ids(), idx.reshape(-1)).relu()
        aux = pick.latents(avals, idx, rows_n, n)
    return lat, aux


class _AddInto(torch.autograd.Function):
    """out[first:] += part in place (out [L, rows, d], part [L - first, rows, d]); the backward hands the part
    a contiguous view of the output's gradient. Nothing keeps the part: each source layer's decode is freed
    once added (holding all of them took sum_l (L-l) / L = 15.5 outputs' memory at 30 layers)."""

    @staticmethod
    def forward(ctx, out, part, first):
        out[first:] += part
        ctx.mark_dirty(out)
        ctx.first = first
        return out

    @staticmethod
    def backward(ctx, g):
        return g, g[ctx.first :], None


def _bag(lat: Latents, W: torch.Tensor) -> torch.Tensor:
    idx, vals = lat.indices.contiguous(), lat.values.contiguous()
    if lat.offsets is None:
        return F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum")
    return F.embedding_bag(idx, W, lat.offsets, per_sample_weights=vals, mode="sum")


def _bag_targets(lat: Latents, W: torch.Tensor) -> torch.Tensor:
    """lat (local ids) through W [T, n, d] into every one of its T targets -> [T, rows, d]: one embedding_bag
    over W viewed [T*n, d] whose bags run target by target (each stretch reads one [n, d] table), with
    `clt_kernels.BlockDecode`'s backward (weight gradient as an embedding_bag forward over the output
    gradient: 0.72 s vs autograd's 0.79 s per 15-target block, docs/research/circuits.md)."""
    if lat.offsets is None:
        rows, k = lat.indices.shape
        offsets = torch.arange(0, rows * k, k, device=W.device)
        return block_decode(lat.values.reshape(-1), W, lat.indices.reshape(-1), offsets)
    return block_decode(lat.values, W, lat.indices, lat.offsets)


def decode_layers(sae, codes: list, weights: list | None = None, width: int | None = None) -> torch.Tensor:
    """sum over source layers l of codes[l] through W_dec[l] -> [rows, L*d_out] (training space, no bias).
    codes[l] None: layer l adds nothing. `weights` / `width`: one code through one [n, width] matrix."""
    if weights is not None:
        return _bag(codes[0], weights[0])
    d, L = sae.d_site_out, sae.n_layers
    rows = next((c.n_rows for c in codes if c is not None), 0)
    out = sae.b_dec.new_zeros(L, rows, d)  # target-major; [rows, L*d] at the end
    for l, lat in enumerate(codes):
        if lat is not None:
            out = _AddInto.apply(out, _bag_targets(lat, sae.W_dec[l]), l)
    return out.permute(1, 0, 2).reshape(rows, L * d)


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
