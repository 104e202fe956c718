"""Sparse latent activations and the two sparse kernels that make TopK training cheap on a CPU.

`Latents` holds only the active (latent, value) pairs of each row. TopK keeps a fixed k per row
([rows, k] tensors); BatchTopK, JumpReLU and ReLU keep a variable number per row (flat tensors
plus `offsets`, the start of each row).

`gather_preacts` returns selected pre-activations with a backward that touches only the selected
entries: the encoder gradient costs rows x k x d_in instead of rows x d_sae x d_in.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Latents(NamedTuple):
    values: torch.Tensor             # [rows, k] or [nnz]
    indices: torch.Tensor            # same shape as values, long
    offsets: torch.Tensor | None     # None for fixed k per row, else [rows] start of each row
    n_rows: int
    d_sae: int

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, latent, value) triples of all stored entries."""
        if self.offsets is None:
            k = self.values.shape[1]
            rows = torch.arange(self.n_rows, device=self.values.device).repeat_interleave(k)
            return rows, self.indices.reshape(-1), self.values.reshape(-1)
        counts = torch.diff(self.offsets, append=torch.tensor([self.values.numel()], device=self.offsets.device))
        rows = torch.arange(self.n_rows, device=self.values.device).repeat_interleave(counts)
        return rows, self.indices, self.values

    def l0_per_row(self) -> torch.Tensor:
        rows, _, vals = self.flat()
        return torch.bincount(rows[vals > 0], minlength=self.n_rows)

    def fire_counts(self) -> torch.Tensor:
        """How many rows each latent was active on, [d_sae]."""
        _, idx, vals = self.flat()
        return torch.bincount(idx[vals > 0], minlength=self.d_sae)

    def to_dense(self) -> torch.Tensor:
        rows, idx, vals = self.flat()
        out = torch.zeros(self.n_rows, self.d_sae, dtype=vals.dtype, device=vals.device)
        out[rows, idx] = vals
        return out


def from_dense(acts: torch.Tensor) -> Latents:
    """Latents of a dense [rows, d_sae] activation matrix (values keep their autograd history)."""
    rows, idx = acts.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=acts.shape[0])
    offsets = torch.cumsum(counts, 0) - counts
    return Latents(acts[rows, idx], idx, offsets, acts.shape[0], acts.shape[1])


def decode_sparse(lat: Latents, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j value_j * W_dec[j] per row, via embedding_bag: rows x k x d_out work, not x d_sae."""
    if lat.offsets is None:
        return F.embedding_bag(lat.indices, W_dec, per_sample_weights=lat.values, mode="sum")
    return F.embedding_bag(lat.indices, W_dec, lat.offsets, per_sample_weights=lat.values, mode="sum")


class _GatherPreacts(torch.autograd.Function):
    """values[e] = x[rows[e]] @ W_enc[:, cols[e]] + b_enc[cols[e]], with a sparse backward."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, rows, cols, values):
        ctx.save_for_backward(x, W_enc, rows, cols)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x, W_enc, rows, cols = ctx.saved_tensors
        n, d_sae = x.shape[0], W_enc.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        if ctx.needs_input_grad[1]:
            s = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (d_sae, n), check_invariants=False)
            grad_W = torch.sparse.mm(s, x).t().contiguous()  # contiguous keeps Adam's update fast
        if ctx.needs_input_grad[0]:
            s = torch.sparse_coo_tensor(torch.stack([rows, cols]), grad, (n, d_sae), check_invariants=False)
            grad_x = torch.sparse.mm(s, W_enc.t().contiguous())
        return grad_x, grad_W, grad_b, None, None, None


@torch.compiler.disable  # --compile: dynamo cannot trace the sparse backward (sparse_coo_tensor); run it eager
def gather_preacts(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, pre: torch.Tensor,
                   rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Selected entries of `pre` (= x @ W_enc + b_enc, computed without grad) with sparse grads.
    `b_enc` may be any differentiable [d_sae] bias (e.g. one that folds in input centring)."""
    return _GatherPreacts.apply(x, W_enc, b_enc, rows, cols, pre[rows, cols])
