"""One CLT source layer's block decode with a cheaper backward (clt_code.py's `_bag_targets`).

The decode is one embedding_bag over W [T, n, d] viewed [T*n, d] (a bag per (target, row)). Autograd's
backward of embedding_bag costs ~3.6x its forward on the 2-core CPU (docs/research/circuits.md, "CLT step
cost"); `BlockDecode` computes the weight gradient as another embedding_bag FORWARD, over the output
gradient g [T*rows, d] with the transposed code as bags (bag (t, j) sums value x g[t, row] over latent j's
entries), written straight into W's gradient shape [T, n, d], and the values' gradient with aten's own
per-sample-weights kernel (sum over targets of g[t, row] . W[t, j]). Exact: the same sums, reordered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _spread(idx: torch.Tensor, offsets: torch.Tensor, vals: torch.Tensor, T: int, stride: int, nnz: int):
    """A code's bags repeated for T tables stacked [T*stride, d] -> (indices, offsets, weights)."""
    t = torch.arange(T, device=idx.device)
    ii = (idx.unsqueeze(0) + (t * stride).view(T, 1)).reshape(-1)
    oo = (offsets.unsqueeze(0) + (t * nnz).view(T, 1)).reshape(-1)
    return ii, oo, vals.repeat(T)


class BlockDecode(torch.autograd.Function):
    """(vals [nnz], W [T, n, d], idx [nnz] local ids, offsets [rows] each row's first entry) -> [T, rows, d]."""

    @staticmethod
    def forward(ctx, vals, W, idx, offsets):
        T, n, d = W.shape
        ii, oo, vv = _spread(idx, offsets, vals, T, n, idx.numel())
        out = F.embedding_bag(ii, W.view(T * n, d), oo, per_sample_weights=vv, mode="sum")
        ctx.save_for_backward(vals, W, idx, offsets)
        return out.view(T, offsets.numel(), d)

    @staticmethod
    def backward(ctx, g):
        vals, W, idx, offsets = ctx.saved_tensors
        T, n, d = W.shape
        rows, nnz = offsets.numel(), idx.numel()
        g = g.contiguous().view(T * rows, d)
        counts = torch.diff(offsets, append=offsets.new_tensor([nnz]))
        row_of = torch.repeat_interleave(torch.arange(rows, device=idx.device), counts)  # [nnz]
        g_vals = g_W = None
        if ctx.needs_input_grad[1]:
            order = idx.argsort(stable=True)
            starts = torch.zeros(n, dtype=torch.long, device=idx.device)
            starts[1:] = torch.bincount(idx, minlength=n).cumsum(0)[:-1]
            ii, oo, vv = _spread(row_of[order], starts, vals[order], T, rows, nnz)
            g_W = F.embedding_bag(ii, g, oo, per_sample_weights=vv, mode="sum").view(T, n, d)
        if ctx.needs_input_grad[0]:
            ii, oo, _ = _spread(idx, offsets, vals, T, n, nnz)
            bag_of = (row_of.unsqueeze(0) + (torch.arange(T, device=idx.device) * rows).view(T, 1)).reshape(-1)
            per = torch.ops.aten._embedding_bag_per_sample_weights_backward(g, W.view(T * n, d), ii, oo, bag_of, 0)
            g_vals = per.view(T, nnz).sum(0)
        return g_vals, g_W, None, None


def block_decode(vals: torch.Tensor, W: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Flat code (vals, local ids idx [nnz], each row's first entry `offsets` [rows]) through W [T, n, d]."""
    return BlockDecode.apply(vals, W, idx, offsets)
