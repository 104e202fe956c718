"""Latent-sharded training (`--distributed latents`, as sparsify's --distribute_latents): each rank
holds a contiguous slice of every SAE's latents (encoder columns, encoder bias, decoder rows and
their Adam moments); the decoder bias b_dec and buffers (BatchTopK's threshold) are replicated.
Every rank sees the whole batch.

One step, on every rank:
  pre-activations of its own latents                     [rows, d_sae / world]   (local matmul)
  its local candidates, all-gathered                     TopK [rows, world * k]; BatchTopK [world * k * rows]
                                                         -> the exact global selection
  the partial decode of the selected latents it owns, all-reduced (sum)          -> the reconstruction
A shard is an ordinary dictionary of its type on its slice, whose reductions over latents (top-k,
decode sums: sae/reductions.py) are the collectives of sharded_saes.py; this file checks a
configuration, slices full members into shards and gathers them back.

A cross-layer transcoder (sae/clt.py; L layers of n latents) is split by latents too, not by layer: each
rank holds the j-range [r n/R, (r+1) n/R) of EVERY layer (its columns of each W_enc.l, its rows of each
W_dec.l, its entries of each layer's block of b_enc), an ordinary CLT of n/R latents per layer whose
reductions take each layer's top-k over the ranks. Memory and work are then the same on every rank; a split
by layer would not balance (layer 0's latents own L decoder blocks, the last layer's one).

Saving and checkpoints gather the slices into one ordinary SAE (and Adam state) on rank 0, so the
files are those of single-process training; resume slices the checkpoint again.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UserError
from ..sae import ARCHITECTURES, SparseCoder, build_sae
from ..sae.clt import CrossLayerTranscoder
from .checkpoint import load_checkpoint
from .members import Member, new_member
from .sharded_saes import LatentSplit

# the dimension of each parameter (and its Adam moments) that indexes latents, by its name before any '.';
# others are replicated. A CLT: W_enc.l [d_in, n], b_enc [L*n] (L blocks of n), W_dec.l [L-l, n, d_out]
LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
CLT_LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 1}


def latent_layout(sae: SparseCoder) -> tuple[dict[str, int], int]:
    """(each latent-indexed parameter's latent dimension, the latents per block): a latent dimension holds
    equal blocks (an SAE's: one of d_sae; a CLT's b_enc and dead-latent counters: one per layer) and a rank
    holds the same range of every block."""
    if isinstance(sae, CrossLayerTranscoder):
        return CLT_LATENT_DIM, sae.n_per_layer
    return LATENT_DIM, sae.cfg.d_sae


def latent_dim(sae: SparseCoder, name: str) -> int | None:
    """The dimension of parameter `name` of `sae` that indexes latents; None: replicated (b_dec)."""
    return latent_layout(sae)[0].get(name.split(".")[0])


def check_latents_mode(cfg, world: int) -> None:
    """Before any model loads: what latent sharding cannot train."""
    shardable = [a for a, kind in ARCHITECTURES.items() if "latents" in kind.capabilities.torchrun]
    if cfg.arch not in shardable:
        raise UserError(
            f"--distributed latents: --arch {cfg.arch} is not supported (its sparsity is not a top-k "
            f"over latents that can be computed exactly from per-rank candidates); supported: "
            f"{', '.join(shardable)}. Use --distributed data or modules"
        )
    if cfg.skip:
        raise UserError(
            "--distributed latents: --skip is not supported (W_skip is not a latent parameter); "
            "use --distributed modules"
        )
    if cfg.latents % world:
        raise UserError(
            f"--distributed latents: --dict-size {cfg.latents} is not divisible by the {world} processes; "
            f"use a multiple of {world} (e.g. {cfg.latents - cfg.latents % world + world})"
        )


# ------------------------------------------------------------ slicing and gathering members
def shard_member(m: Member, comm, device: str) -> Member:
    """This rank's slice of a full member: weights, Adam moments, dead-latent counters."""
    full = m.sae  # (the latents divide by the processes: check_latents_mode, after --init-from's adoption)
    dims, block = latent_layout(full)
    per = block // comm.world
    off = comm.rank * per
    sl = slice(off, off + per)  # within each block (a CLT: within each layer)
    sae = latent_slice(full, sl).to(device)
    sae.reductions = LatentSplit(comm, off, per, full.cfg.d_sae, device)
    out = new_member(m.name, sae, m.lr, device, m.stats)
    for (name, p_full), p in zip(full.named_parameters(), sae.parameters()):
        st = m.opt.state.get(p_full)
        if st:
            out.opt.state[p] = {
                k: v if k == "step" else _slice(dims.get(name.split(".")[0]), block, v, sl).clone()
                for k, v in st.items()
            }
    out.since_fired.copy_(_slice(0, block, m.since_fired, sl))
    return out


def gather_member(m: Member, comm) -> Member | None:
    """The full member on rank 0 (None on the others): slices concatenated in rank order."""
    sae = m.sae
    state = (
        {k: v.cpu() for k, v in sae.state_dict().items()},
        [
            {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in m.opt.state.get(p, {}).items()}
            for p in sae.parameters()
        ],
        m.since_fired.cpu(),
    )
    parts = comm.all_gather_object(state, "gathering latent shards")
    if comm.rank != 0:
        return None
    full_cfg = dataclasses.replace(sae.cfg, d_sae=sae.reductions.latents, extra=dict(sae.cfg.extra))
    full = build_sae(full_cfg)
    dims, block = latent_layout(sae)  # a slice's blocks: each rank's part of every block, in rank order

    def cat(name, vs):
        return _cat(dims.get(name.split(".")[0]), block, vs)

    full.load_state_dict({k: cat(k, [p[0][k] for p in parts]) for k in parts[0][0]})
    full = full.to(m.since_fired.device)
    out = new_member(m.name, full, m.lr, str(m.since_fired.device), m.stats)
    for i, (name, p) in enumerate(full.named_parameters()):
        st = parts[0][1][i]
        if st:
            out.opt.state[p] = {
                k: v if k == "step" else cat(name, [q[1][i][k] for q in parts]).to(p.device) for k, v in st.items()
            }
    out.since_fired.copy_(_cat(0, block, [p[2] for p in parts]))
    return out


def latent_slice(full: SparseCoder, sl: slice) -> SparseCoder:
    """Latents `sl` (of every block: a CLT's of every layer) of `full` as a dictionary of its own type: the
    latent-indexed parameters narrowed, the others and every buffer (BatchTopK's threshold, Matryoshka's
    group bounds) copied. Built on the meta device from the full configuration, so the type's own checks
    see the whole dictionary (Matryoshka's groups span every latent) and no second full-size set of
    weights is allocated; a CLT from the slice's own (n/R latents per layer: its sizes follow d_sae)."""
    dims, block = latent_layout(full)
    cfg = dataclasses.replace(
        full.cfg, d_sae=(sl.stop - sl.start) * (full.cfg.d_sae // block), extra=dict(full.cfg.extra)
    )
    with torch.device("meta"):
        sae = type(full)(cfg if isinstance(full, CrossLayerTranscoder) else dataclasses.replace(cfg, d_sae=block))
    sae.cfg = cfg
    with torch.no_grad():
        for name, p in full.named_parameters():  # replaced in place: the order (Adam's state) is kept
            owner, _, leaf = name.rpartition(".")
            setattr(
                sae.get_submodule(owner),
                leaf,
                nn.Parameter(
                    _slice(dims.get(name.split(".")[0]), block, p.detach(), sl).clone(), requires_grad=p.requires_grad
                ),
            )
        for name, b in full.named_buffers():
            owner, _, leaf = name.rpartition(".")
            setattr(sae.get_submodule(owner), leaf, b.clone())
    return sae


def _slice(d: int | None, block: int, v: torch.Tensor, sl: slice) -> torch.Tensor:
    """Entries `sl` of every `block`-long block of v's dimension d (None: v, replicated)."""
    if d is None:
        return v
    return v.unflatten(d, (v.shape[d] // block, block)).narrow(d + 1, sl.start, sl.stop - sl.start).flatten(d, d + 1)


def _cat(d: int | None, block: int, vs: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of _slice over the ranks: each rank's `block`-long part of every block, in rank order."""
    if d is None:
        return vs[0]
    blocks = vs[0].shape[d] // block
    return torch.cat([v.unflatten(d, (blocks, block)) for v in vs], d + 1).flatten(d, d + 1)


def load_sharded(out, members: list[Member], comm, device: str) -> None:
    """--resume: read the (single-process layout) checkpoint in full, keep this rank's slices."""
    fulls = []
    for m in members:
        cfg = dataclasses.replace(m.sae.cfg, d_sae=m.sae.reductions.latents, extra=dict(m.sae.cfg.extra))
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
