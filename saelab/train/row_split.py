"""The batch-wide reductions of a dictionary under data-parallel training (`--distributed data`): each
rank holds a share of every batch's rows, but BatchTopK's and Matryoshka's selection keeps the
k x rows largest activations of the whole batch. Through this object (sae/reductions.py) they are
global, as latent sharding makes them over latents (sharded_saes.py):

  batch_rows   the batch's row count, set by Distributed.shard before it splits the rows (no collective)
  top_values   each rank's n largest candidates (padded to n with -inf, so every rank sends one
               shape) all-gathered -> the n largest of the union: the single-process threshold
  min          the smallest kept activation over the ranks (the running inference threshold)
  any          a rank whose rows may hold values the candidates miss refines; every rank takes part

So each rank keeps exactly its rows' part of the single-process selection, and the loss's
variance-share weights (Distributed.shard) make the summed gradient the single-process one. The
reductions over latents stay local: every rank holds every latent.

When a batch is too small to split (every rank takes all rows, Distributed.shard) or at `finalize`
(every rank holds the same inputs), the reductions stay local too: `total_rows` is None then.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..sae.reductions import Local


class RowSplit(Local):
    """The batch-wide reductions of one dictionary over the ranks' shares of a batch."""

    def __init__(self, comm, device: str | torch.device = "cpu"):
        self.comm, self.device = comm, device  # device: of the flags exchanged (nccl: the GPU)
        self.total_rows: int | None = None  # this step's batch rows when split over the ranks, else None

    @property
    def split(self) -> bool:
        return self.total_rows is not None

    def batch_rows(self, n: int) -> int:
        return self.total_rows if self.split else n

    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        local = super().top_values(flat, n)
        if not self.split:
            return local
        padded = flat.new_full((n,), float("-inf"))
        padded[: local.numel()] = local
        union = torch.cat(self.comm.all_gather(padded, "BatchTopK candidates"))
        union = union[union > float("-inf")]
        return union.topk(min(n, union.numel()), sorted=False).values

    def min(self, lo: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return lo
        return self.comm.all_reduce(lo.reshape(1).clone(), dist.ReduceOp.MIN, "BatchTopK threshold")[0]

    def any(self, flag: bool) -> bool:
        if not self.split:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        return bool(self.comm.all_reduce(t, dist.ReduceOp.MAX, "BatchTopK refinement")[0])
