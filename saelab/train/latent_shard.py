"""Latent-sharded training (`--distributed latents`, as sparsify's --distribute_latents): each rank
holds a contiguous slice of every SAE's latents (encoder columns, encoder bias, decoder rows and
their Adam moments); the decoder bias b_dec is replicated. Every rank sees the whole batch.

One step, on every rank:
  pre-activations of its own latents                     [rows, d_sae / world]   (local matmul)
  its local top-k candidates, all-gathered               [rows, world * k]       -> the exact global top-k
  the partial decode of the selected latents it owns, all-reduced (sum)          -> the reconstruction
The loss is then computed identically on every rank. Autograd flows only into the local partial
decode (`_global`: value = the sum, gradient = the local part's), so each rank's gradients are the
single-process gradients of its slice. b_dec is the one shared parameter: it enters the
reconstruction once (on rank 0 only, so the direct term is counted once) and the encoder bias
(b_enc - b_dec @ W_enc) on every rank through its slice; summing its gradient over the ranks gives
the single-process gradient. AuxK selects its dead latents globally in the same way.

Saving and checkpoints gather the slices into one ordinary SAE (and Adam state) on rank 0, so the
files are those of single-process training; resume slices the checkpoint again.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import UserError
from ..sae import SaeConfig, SaeOutput, TopKSae, build_sae
from ..sae.latents import Latents, decode_sparse, gather_preacts
from .checkpoint import load_checkpoint
from .members import Member, new_member

SHARDABLE = ("topk",)
# the dimension of each parameter (and its Adam moments) that indexes latents; others are replicated
LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}


def check_latents_mode(cfg, world: int) -> None:
    """Before any model loads: what latent sharding cannot train."""
    if cfg.arch not in SHARDABLE:
        raise UserError(f"--distributed latents: --arch {cfg.arch} is not supported (its sparsity is not a top-k "
                        f"over latents that can be computed exactly from per-rank candidates); supported: "
                        f"{', '.join(SHARDABLE)}. Use --distributed data or modules")
    if cfg.skip:
        raise UserError("--distributed latents: --skip is not supported (W_skip is not a latent parameter); "
                        "use --distributed modules")
    if cfg.latents % world:
        raise UserError(f"--distributed latents: --latents {cfg.latents} is not divisible by the {world} processes; "
                        f"use a multiple of {world} (e.g. {cfg.latents - cfg.latents % world + world})")


class ShardedTopK(TopKSae):
    """This rank's slice [offset, offset + d_sae) of a TopK SAE with `full_d_sae` latents."""

    def __init__(self, cfg: SaeConfig, comm, offset: int, full_d_sae: int):
        super().__init__(cfg)
        self.comm, self.offset, self.full_d_sae = comm, offset, full_d_sae

    # ------------------------------------------------------------ collectives
    def _global(self, local: torch.Tensor, what: str) -> torch.Tensor:
        """The sum over ranks of `local`, with autograd into the local term only."""
        total = self.comm.all_reduce(local.detach().clone(), what=what)
        return local + (total - local.detach())

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
        counts = torch.bincount(rows, minlength=n)
        return Latents(vals, cols, torch.cumsum(counts, 0) - counts, n, self.cfg.d_sae)

    # ------------------------------------------------------------ forward
    def encode(self, x_in):
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            rows, cols = self._global_topk(pre, self.cfg.k, "global top-k")
        return self._latents(x_in, bias, pre, rows, cols), x_in.new_zeros(()), pre

    def decode(self, lat: Latents) -> torch.Tensor:
        part = self._global(decode_sparse(lat, self.W_dec), "partial decode sum")
        # b_dec is counted once: on the other ranks its direct term carries no gradient
        return part + (self.b_dec if self.comm.rank == 0 else self.b_dec.detach())

    def forward(self, x, dead=None, target=None):
        x_in = self.encoder_input(x)
        lat, sparsity, pre = self.encode(x_in)
        recon = self.predict(x_in, lat)
        aux = recon.new_zeros(())
        if dead is not None and target is not None:  # every rank takes the AuxK branch, or none (collectives)
            self._n_dead = int(self.comm.all_reduce(dead.sum().reshape(1).long(), what="dead-latent count").item())
            if self._n_dead:
                aux = self.auxk_loss(x_in, pre, target - recon.detach(), dead)
        return SaeOutput(recon, lat, sparsity, aux, recon.new_zeros(()))

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


# ------------------------------------------------------------ slicing and gathering members
def shard_member(m: Member, comm, device: str) -> Member:
    """This rank's slice of a full member: weights, Adam moments, dead-latent counters."""
    full = m.sae
    if full.cfg.d_sae % comm.world:  # (--init-from sets the latent count after the first check)
        raise UserError(f"--distributed latents: {m.name} has {full.cfg.d_sae} latents, not divisible by the "
                        f"{comm.world} processes")
    per = full.cfg.d_sae // comm.world
    off = comm.rank * per
    cfg = dataclasses.replace(full.cfg, d_sae=per, extra=dict(full.cfg.extra))
    sae = ShardedTopK(cfg, comm, off, full.cfg.d_sae).to(device)
    sl = slice(off, off + per)
    sae.load_state_dict({k: _slice(k, v, sl) for k, v in full.state_dict().items()})
    out = new_member(m.name, sae, m.lr, device, m.stats)
    for (name, p_full), p in zip(full.named_parameters(), sae.parameters()):
        st = m.opt.state.get(p_full)
        if st:
            out.opt.state[p] = {k: v if k == "step" else _slice(name, v, sl).clone() for k, v in st.items()}
    out.since_fired.copy_(m.since_fired[sl])
    return out


def gather_member(m: Member, comm) -> Member | None:
    """The full member on rank 0 (None on the others): slices concatenated in rank order."""
    sae = m.sae
    state = ({k: v.cpu() for k, v in sae.state_dict().items()},
             [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in m.opt.state.get(p, {}).items()}
              for p in sae.parameters()], m.since_fired.cpu())
    parts = comm.all_gather_object(state, "gathering latent shards")
    if comm.rank != 0:
        return None
    full_cfg = dataclasses.replace(sae.cfg, d_sae=sae.full_d_sae, extra=dict(sae.cfg.extra))
    full = build_sae(full_cfg)
    full.load_state_dict({k: _cat(k, [p[0][k] for p in parts]) for k in parts[0][0]})
    full = full.to(m.since_fired.device)
    out = new_member(m.name, full, m.lr, str(m.since_fired.device), m.stats)
    for i, (name, p) in enumerate(full.named_parameters()):
        st = parts[0][1][i]
        if st:
            out.opt.state[p] = {k: v if k == "step" else _cat(name, [q[1][i][k] for q in parts]).to(p.device)
                                for k, v in st.items()}
    out.since_fired.copy_(torch.cat([p[2] for p in parts]))
    return out


def _slice(name: str, v: torch.Tensor, sl: slice) -> torch.Tensor:
    d = LATENT_DIM.get(name)
    return v if d is None else v.narrow(d, sl.start, sl.stop - sl.start)


def _cat(name: str, vs: list[torch.Tensor]) -> torch.Tensor:
    d = LATENT_DIM.get(name)
    return vs[0] if d is None else torch.cat(vs, d)


def load_sharded(out, members: list[Member], comm, device: str) -> None:
    """--resume: read the (single-process layout) checkpoint in full, keep this rank's slices."""
    fulls = []
    for m in members:
        cfg = dataclasses.replace(m.sae.cfg, d_sae=m.sae.full_d_sae, extra=dict(m.sae.cfg.extra))
        fulls.append(new_member(m.name, build_sae(cfg), m.lr))
    load_checkpoint(out, fulls)
    for m, f in zip(members, fulls):
        s = shard_member(f, comm, device)
        m.sae.load_state_dict(s.sae.state_dict())
        m.opt.state.clear()
        for p, q in zip(m.sae.parameters(), s.sae.parameters()):
            if q in s.opt.state:
                m.opt.state[p] = s.opt.state[q]
        m.since_fired.copy_(s.since_fired)
