"""The reductions of a latent-sharded dictionary (`--distributed latents`; latent_shard.py slices and
gathers it): a TopK, BatchTopK or Matryoshka that holds the slice [offset, offset + width) of a
dictionary with `latents` latents computes, through this object (sae/reductions.py), exactly what
the whole dictionary computes in one process.

  row_topk      each rank's top-k candidates per row (values, global ids) all-gathered -> the global
                top-k; this rank keeps the entries it owns (TopK's code, AuxK's dead latents)
  top_values    each rank's candidates all-gathered -> BatchTopK's global (k x rows)-th largest value;
                each rank keeps its own activations >= it (ties kept, in one process too)
  min, any      BatchTopK's running inference threshold and its any-rank refinement
  latent_total  AuxK's dead-latent count over the ranks
  latent_sum    the reconstruction (and AuxK's, and Matryoshka's prefixes) as the sum of the partial decodes

A latent in the global selection is in its rank's local candidates, so the selection is exact. The
loss is computed identically on every rank and autograd flows only into the local partial decode
(`latent_sum`), so each rank gets the single-process gradient of its slice. b_dec, the one replicated
parameter, enters the reconstruction on rank 0 only (`shared`) and the encoder bias
(b_enc - b_dec @ W_enc) on every rank through its slice; the loop sums its gradient over the ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..sae.reductions import Local, Pick


class LatentSplit(Local):
    """Reductions over the latents of every rank (each holds `width` of them from `offset`); every
    rank holds every row, so the batch-wide ones range over all of the batch's latents."""

    def __init__(self, comm, offset: int, width: int, latents: int, device: str | torch.device = "cpu"):
        self.comm, self.offset, self.width, self.latents = comm, offset, width, latents
        self.device = device  # of the flags and counts exchanged (nccl: the GPU)

    # ------------------------------------------------------------ over latents
    def row_topk(self, scores: torch.Tensor, k: int) -> Pick:
        """This rank's entries among each row's global top-k of `scores` [rows, d <= width]: local
        columns, row-major. Ranks may score different numbers of columns (AuxK's dead latents): each
        sends k candidates, padded with -inf, which are never chosen."""
        kk = min(k, scores.shape[1])
        top = scores.topk(kk, dim=-1, sorted=False)
        vals, ids = top.values, top.indices + self.offset  # global latent ids
        if kk < k:
            vals = torch.cat([vals, vals.new_full((len(vals), k - kk), float("-inf"))], 1)
            ids = torch.cat([ids, ids.new_full((len(ids), k - kk), -1)], 1)
        vals = torch.cat(self.comm.all_gather(vals.contiguous(), "top-k over latents"), 1)  # [rows, world * k]
        ids = torch.cat(self.comm.all_gather(ids.contiguous(), "top-k over latents"), 1)
        best = vals.topk(k, dim=-1, sorted=False).indices
        chosen, chosen_vals = ids.gather(1, best), vals.gather(1, best)
        mine = (chosen >= self.offset) & (chosen < self.offset + self.width) & torch.isfinite(chosen_vals)
        rows, pos = mine.nonzero(as_tuple=True)  # row-major: rows sorted
        return Pick(chosen[rows, pos] - self.offset, rows)

    def latent_total(self, n: int) -> int:
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        return int(self.comm.all_reduce(t, what="dead-latent count")[0])

    def latent_sum(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of `partial`, with autograd into the local term only."""
        total = self.comm.all_reduce(partial.detach().clone(), what="partial decode sum")
        return partial + (total - partial.detach())

    def shared(self, param: torch.Tensor) -> torch.Tensor:
        """A replicated parameter's direct term counts once: on the other ranks it carries no gradient."""
        return param if self.comm.rank == 0 else param.detach()

    def replicate(self, *tensors: torch.Tensor) -> None:
        for t in tensors:  # bitwise the same on every rank
            self.comm.broadcast(t.data, "data-dependent init")

    # ------------------------------------------------------------ over the batch (every rank: all rows)
    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        local = flat.topk(min(n, flat.numel()), sorted=False).values  # every rank: the same length
        gathered = torch.cat(self.comm.all_gather(local.contiguous(), "BatchTopK candidates"))
        return gathered.topk(min(n, gathered.numel()), sorted=False).values

    def min(self, lo: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(lo.reshape(1).clone(), dist.ReduceOp.MIN, "BatchTopK threshold")[0]

    def any(self, flag: bool) -> bool:
        """A rank with rows whose candidates may miss the threshold refines; every rank takes part."""
        t = torch.tensor([int(flag)], device=self.device)
        return bool(self.comm.all_reduce(t, dist.ReduceOp.MAX, "BatchTopK refinement")[0])
