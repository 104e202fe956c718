"""Sparse latent activations and the two sparse kernels that make TopK training cheap on a CPU.

`Latents` holds only the active (latent, value) pairs of each row. TopK keeps a fixed k per row
([rows, k] tensors); BatchTopK, JumpReLU and ReLU keep a variable number per row (flat tensors
plus `offsets`, the start of each row).

`gather_preacts` returns selected pre-activations with a backward that touches only the selected
entries: the encoder gradient costs rows x k x d_in instead of rows x d_sae x d_in. The penalty
architectures (relu, jumprelu, gated) select a variable set per row (`latents_of`) and take their
decoder-norm-weighted L1 on those entries only (`weighted_l1`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Latents(NamedTuple):
    values: torch.Tensor  # [rows, k] or [nnz]
    indices: torch.Tensor  # same shape as values, long
    offsets: torch.Tensor | None  # None for fixed k per row, else [rows] start of each row
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
    return latents_of(acts[rows, idx], rows, idx, acts.shape[0], acts.shape[1])


def latents_of(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, d_sae: int) -> Latents:
    """Variable-count Latents of (row, latent, value) entries whose rows are ascending (as `nonzero` gives)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return Latents(values, cols, torch.cumsum(counts, 0) - counts, n_rows, d_sae)


def weighted_l1(values: torch.Tensor, cols: torch.Tensor, W_dec: torch.Tensor, n_rows: int) -> torch.Tensor:
    """sum_e values_e * ||W_dec[cols_e]|| / n_rows: the per-row mean of sum_j z_j ||W_dec_j|| taken over the
    stored entries only (the others are 0), with its gradient w.r.t. the values and the decoder norms."""
    return (values * W_dec.norm(dim=1)[cols]).sum() / n_rows


def decode_sparse(lat: Latents, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j value_j * W_dec[j] per row, via embedding_bag: rows x k x d_out work, not x d_sae."""
    if lat.offsets is None:
        return F.embedding_bag(lat.indices, W_dec, per_sample_weights=lat.values, mode="sum")
    return F.embedding_bag(lat.indices, W_dec, lat.offsets, per_sample_weights=lat.values, mode="sum")


# Above this fraction of rows x d_sae selected, a dense backward (scatter the gradients into a
# [rows, d_sae] matrix, then BLAS) beats torch.sparse.mm: at 4,096 x 4,608 x 576 on the shared 2-core
# CPU the two were about equal at 5% selected and dense 4-6x faster at 30-40% (noisy; re-measure with
# bench/penalty_sparse_paths.py --density). A penalty architecture at an untuned coefficient starts
# with L0 in the thousands.
DENSE_BACKWARD_ABOVE = 1 / 16


class _GatherPreacts(torch.autograd.Function):
    """values[e] = x[rows[e]] @ W_enc[:, cols[e]] + b_enc[cols[e]], with a sparse backward."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, rows, cols, values, dense_above):
        ctx.save_for_backward(x, W_enc, rows, cols)
        ctx.dense_above = dense_above
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x, W_enc, rows, cols = ctx.saved_tensors
        n, d_sae = x.shape[0], W_enc.shape[1]
        grad_x = grad_W = grad_b = None
        if rows.numel() > ctx.dense_above * n * d_sae:  # the same sums, by BLAS (accumulate: repeated pairs)
            g = grad.new_zeros(n, d_sae).index_put_((rows, cols), grad, accumulate=True)
            return (
                g @ W_enc.t() if ctx.needs_input_grad[0] else None,
                x.t() @ g if ctx.needs_input_grad[1] else None,
                g.sum(0) if ctx.needs_input_grad[2] else None,
                None,
                None,
                None,
                None,
            )
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        if ctx.needs_input_grad[1]:
            s = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (d_sae, n), check_invariants=False)
            grad_W = torch.sparse.mm(s, x).t().contiguous()  # contiguous keeps Adam's update fast
        if ctx.needs_input_grad[0]:
            s = torch.sparse_coo_tensor(torch.stack([rows, cols]), grad, (n, d_sae), check_invariants=False)
            grad_x = torch.sparse.mm(s, W_enc.t().contiguous())
        return grad_x, grad_W, grad_b, None, None, None, None


def gather_preacts(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    pre: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    dense_above: float = 1.0,
) -> torch.Tensor:
    """Selected entries of `pre` (= x @ W_enc + b_enc, computed without grad) with sparse grads.
    `b_enc` may be any differentiable [d_sae] bias (e.g. one that folds in input centring).
    `dense_above`: the fraction of rows x d_sae selected above which the backward goes dense
    (DENSE_BACKWARD_ABOVE for a variable selection; the default 1.0 never does)."""
    return _gather(x, W_enc, b_enc, rows, cols, pre[rows, cols], dense_above)


def _gather_eager(x, W_enc, b_enc, rows, cols, picked, dense_above):
    return _GatherPreacts.apply(x, W_enc, b_enc, rows, cols, picked, dense_above)


_gather = _gather_eager  # read at call time, so --compile can swap in the dynamo-disabled version


def keep_sparse_backward_eager() -> None:
    """--compile: dynamo cannot trace the sparse backward (sparse_coo_tensor), so it runs eager. Done
    here, when a run compiles, not with a decorator at import: `torch.compiler.disable` imports
    torch._dynamo, about 2 s of every command's start-up (`saelab --help` included)."""
    global _gather
    _gather = torch.compiler.disable(_gather_eager)
