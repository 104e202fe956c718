"""The dictionaries of latent-sharded training (`--distributed latents`; latent_shard.py slices and
gathers them): each holds the slice [offset, offset + d_sae) of a dictionary with `full_d_sae`
latents and computes, with collectives, exactly what the whole dictionary computes in one process.

  TopK        each rank's top-k candidates per row (values, global ids) all-gathered -> the global top-k
  BatchTopK   each rank's top-(k x rows) candidate values (batch_select: per-row top-2k, refined
              where a row may hold more) all-gathered -> the global (k x rows)-th largest value t;
              each rank keeps its own activations >= t (all ties kept, in one process too), and the
              running inference threshold takes the all-reduced smallest kept value
  Matryoshka  BatchTopK's selection; each prefix's reconstruction is the sum of the partial decodes

A latent in the global selection is in its rank's local candidates, so the selection is exact. The
reconstruction is the all-reduced sum of the partial decodes; the loss is computed identically on
every rank and autograd flows only into the local partial decode (`_global`), so each rank gets the
single-process gradient of its slice. b_dec, the one replicated parameter, enters the reconstruction
on rank 0 only and the encoder bias (b_enc - b_dec @ W_enc) on every rank through its slice; the
loop sums its gradient over the ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..sae import BatchTopKSae, MatryoshkaSae, SaeConfig, SaeOutput, TopKSae
from ..sae.latents import Latents, decode_sparse, gather_preacts, latents_of
from ..sae.matryoshka import group_decodes


class _Sharded:
    """What every sharded dictionary shares: collectives, the summed decode, AuxK, the init."""

    def __init__(self, cfg: SaeConfig, comm, offset: int, full_d_sae: int):
        super().__init__(cfg)
        self.comm, self.offset, self.full_d_sae = comm, offset, full_d_sae

    # ------------------------------------------------------------ collectives
    def _global(self, local: torch.Tensor, what: str) -> torch.Tensor:
        """The sum over ranks of `local`, with autograd into the local term only."""
        total = self.comm.all_reduce(local.detach().clone(), what=what)
        return local + (total - local.detach())

    def _b_dec(self) -> torch.Tensor:
        """b_dec's direct term counts once: on the other ranks it carries no gradient."""
        return self.b_dec if self.comm.rank == 0 else self.b_dec.detach()

    def _global_topk(self, scores: torch.Tensor, k: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, local columns) of this rank's entries among each row's global top-k of `scores`."""
        kk = min(k, scores.shape[1])
        top = scores.topk(kk, dim=-1, sorted=False)
        vals = torch.cat(self.comm.all_gather(top.values.contiguous(), what), 1)        # [rows, world * kk]
        idx = torch.cat(self.comm.all_gather((top.indices + self.offset).contiguous(), what), 1)
        best = vals.topk(k, dim=-1, sorted=False).indices
        chosen, chosen_vals = idx.gather(1, best), vals.gather(1, best)                   # global latent ids
        mine = (chosen >= self.offset) & (chosen < self.offset + self.cfg.d_sae) & torch.isfinite(chosen_vals)
        rows, pos = mine.nonzero(as_tuple=True)                                           # row-major: rows sorted
        return rows, chosen[rows, pos] - self.offset

    def _latents(self, x_in, bias, pre, rows, cols) -> Latents:
        n = x_in.shape[0]
        if torch.is_grad_enabled():
            vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, cols).relu()
        else:
            vals = pre[rows, cols].relu()
        return latents_of(vals, rows, cols, n, self.cfg.d_sae)

    # ------------------------------------------------------------ forward
    def decode(self, lat: Latents) -> torch.Tensor:
        return self._global(decode_sparse(lat, self.W_dec), "partial decode sum") + self._b_dec()

    def forward(self, x, dead=None, target=None):
        x_in = self.encoder_input(x)
        lat, sparsity, pre = self.encode(x_in)
        recon = self.predict(x_in, lat)
        aux = extra = recon.new_zeros(())
        if dead is not None and target is not None:  # every rank takes the AuxK branch, or none (collectives)
            self._n_dead = int(self.comm.all_reduce(dead.sum().reshape(1).long(), what="dead-latent count").item())
            if self._n_dead:
                aux = self.auxk_loss(x_in, pre, target - recon.detach(), dead)
        if target is not None:
            extra = self.extra_loss(x_in, lat, recon, target)
        return SaeOutput(recon, lat, sparsity, aux, extra)

    def auxk_loss(self, x_in, pre, residual, dead):
        k_aux = min(self.cfg.aux_k or self.cfg.d_in // 2, self._n_dead)
        bias = self.encoder_bias()
        with torch.no_grad():
            rows, cols = self._global_topk(pre.masked_fill(~dead, float("-inf")), k_aux, "AuxK top-k")
        lat = self._latents(x_in, bias, pre, rows, cols)
        pred = self._global(decode_sparse(lat, self.W_dec), "AuxK decode sum")
        denom = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return self.cfg.aux_coeff * (pred - residual).pow(2).sum() / denom

    @torch.no_grad()
    def init_from_data(self, x, y, bias_init="median"):
        super().init_from_data(x, y, bias_init)
        for t in (self.in_scale, self.out_scale, self.b_dec):  # bitwise the same on every rank
            self.comm.broadcast(t.data, "data-dependent init")


class ShardedTopK(_Sharded, TopKSae):
    def encode(self, x_in):
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            rows, cols = self._global_topk(pre, self.cfg.k, "global top-k")
        return self._latents(x_in, bias, pre, rows, cols), x_in.new_zeros(()), pre


class ShardedBatchTopK(_Sharded, BatchTopKSae):
    """BatchTopK's own encode and finalize, with its two batch-wide reductions made global."""

    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        local = flat.topk(min(n, flat.numel()), sorted=False).values  # every rank: the same length
        gathered = torch.cat(self.comm.all_gather(local.contiguous(), "BatchTopK candidates"))
        return gathered.topk(min(n, gathered.numel()), sorted=False).values

    def reduce_min(self, lo: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(lo.reshape(1).clone(), dist.ReduceOp.MIN, "BatchTopK threshold")[0]

    def any_rank(self, flag: bool) -> bool:
        """A rank with rows whose candidates may miss the threshold refines; every rank takes part."""
        t = torch.tensor([int(flag)], device=self.b_dec.device)
        return bool(self.comm.all_reduce(t, dist.ReduceOp.MAX, "BatchTopK refinement")[0])


class ShardedMatryoshka(ShardedBatchTopK):
    """Matryoshka on a slice: its groups are global latent ranges, so a local latent's group is that
    of its global id, and each prefix's reconstruction is summed over the ranks (one all-reduce)."""

    def __init__(self, cfg: SaeConfig, comm, offset: int, full_d_sae: int):
        super().__init__(cfg, comm, offset, full_d_sae)
        self.register_buffer("bounds", torch.tensor(cfg.groups).cumsum(0), persistent=False)

    extra_loss = MatryoshkaSae.extra_loss

    def prefix_recons(self, lat: Latents) -> list[torch.Tensor]:
        """Every proper prefix's reconstruction (the full one is `decode`'s)."""
        parts = group_decodes(lat, self.W_dec, self.bounds, len(self.bounds) - 1, self.offset)
        prefixes = self._global(parts, "matryoshka prefix decode sums").cumsum(1) + self._b_dec()
        return list(prefixes.unbind(1))


SHARDED = {"topk": ShardedTopK, "batchtopk": ShardedBatchTopK, "matryoshka": ShardedMatryoshka}
