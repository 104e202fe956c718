"""BatchTopK and Matryoshka under data-parallel training (`--distributed data`): each rank holds a
share of every batch's rows, but the selection keeps the k x rows largest activations of the whole
batch. The dictionary's four batch-wide reductions (`BatchTopKSae.batch_rows / top_values /
reduce_min / any_rank`) are made global here, as latent sharding does over latents
(sharded_saes.py):

  batch_rows   the batch's row count: this rank's rows summed over the ranks
  top_values   each rank's n largest candidates (padded to n with -inf, so every rank sends one
               shape) all-gathered -> the n largest of the union: the single-process threshold
  reduce_min   the smallest kept activation over the ranks (the running inference threshold)
  any_rank     a rank whose rows may hold values the candidates miss refines; every rank takes part

So each rank keeps exactly its rows' part of the single-process selection, and the loss's
variance-share weights (Distributed.shard) make the summed gradient the single-process one.

When a batch is too small to split (every rank takes all rows, Distributed.shard) or at `finalize`
(every rank holds the same inputs), the reductions stay local: the flag `split` says which.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..sae import BatchTopKSae


class RowSplitSelection:
    """The batch-wide reductions of one dictionary over the ranks' shares of a batch."""

    def __init__(self, sae: BatchTopKSae, comm):
        self.sae, self.comm = sae, comm
        self.split = True  # this step's rows are a share of the batch (False: every rank has them all)

    def attach(self) -> None:
        """Instance attributes shadow the class's one-process reductions (the weights are untouched)."""
        for name in ("batch_rows", "top_values", "reduce_min", "any_rank"):
            setattr(self.sae, name, getattr(self, name))

    def batch_rows(self, n: int) -> int:
        if not self.split:
            return n
        t = torch.tensor([n], dtype=torch.long, device=self.sae.b_dec.device)
        return int(self.comm.all_reduce(t, what="BatchTopK batch rows")[0])

    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        local = flat.topk(min(n, flat.numel()), sorted=False).values
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
