"""BatchTopK and Matryoshka under data-parallel training (`--distributed data`): each rank holds a
share of every batch's rows, but the selection keeps the k x rows largest activations of the whole
batch. The dictionary's four batch-wide reductions (`BatchTopKSae.batch_rows / top_values /
reduce_min / any_rank`) are made global here, as latent sharding does over latents
(sharded_saes.py):

  batch_rows   the batch's row count, set by Distributed.shard before it splits the rows (no collective)
  top_values   each rank's n largest candidates (padded to n with -inf, so every rank sends one
               shape) all-gathered -> the n largest of the union: the single-process threshold
  reduce_min   the smallest kept activation over the ranks (the running inference threshold)
  any_rank     a rank whose rows may hold values the candidates miss refines; every rank takes part

So each rank keeps exactly its rows' part of the single-process selection, and the loss's
variance-share weights (Distributed.shard) make the summed gradient the single-process one.

When a batch is too small to split (every rank takes all rows, Distributed.shard) or at `finalize`
(every rank holds the same inputs), the reductions stay local: `total_rows` is None then.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..sae import BatchTopKSae


class RowSplitSelection:
    """The batch-wide reductions of one dictionary over the ranks' shares of a batch."""

    def __init__(self, sae: BatchTopKSae, comm):
        self.sae, self.comm = sae, comm
        self.total_rows: int | None = None  # this step's batch rows when split over the ranks, else None

    def attach(self) -> None:
        """Instance attributes shadow the class's one-process reductions (the weights are untouched)."""
        for name in ("batch_rows", "top_values", "reduce_min", "any_rank"):
            setattr(self.sae, name, getattr(self, name))

    @property
    def split(self) -> bool:
        return self.total_rows is not None

    def batch_rows(self, n: int) -> int:
        return self.total_rows if self.split else n

    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        local = BatchTopKSae.top_values(self.sae, flat, n)  # the class's own, shadowed by attach()
        if not self.split:
            return local
        padded = flat.new_full((n,), float("-inf"))
        padded[:local.numel()] = local
        union = torch.cat(self.comm.all_gather(padded, "BatchTopK candidates"))
        union = union[union > float("-inf")]
        return union.topk(min(n, union.numel()), sorted=False).values

    def reduce_min(self, lo: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return lo
        return self.comm.all_reduce(lo.reshape(1).clone(), dist.ReduceOp.MIN, "BatchTopK threshold")[0]

    def any_rank(self, flag: bool) -> bool:
        if not self.split:
            return flag
        t = torch.tensor([int(flag)], device=self.sae.b_dec.device)
        return bool(self.comm.all_reduce(t, dist.ReduceOp.MAX, "BatchTopK refinement")[0])
