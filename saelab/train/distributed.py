"""Distributed training with torch.distributed (`torchrun --nproc_per_node N -m saelab.cli train ...`):
the `Parallel` strategy that the one training loop (loop.py) calls at fixed points.

Three ways to share the work (`--distributed data | modules | latents`):

data     Every rank trains every SAE. The LM forward of each chunk is split by batches over the
         ranks and the activations are all-gathered, so every rank holds the same chunk that a
         single process would; each optimiser batch is then split by rows, each rank back-props
         its rows, and the gradients are all-reduced. Each rank's gradient is weighted by
         (its rows' target variance / the batch's), which makes the summed gradient exactly the
         single-process gradient of the FVU loss. (The AuxK and sparsity terms get the same
         weights, which is exact only when their normalisers split like the FVU's; see docs/SCALE.md.)
         Every dictionary's batch-wide reductions (BatchTopK's and Matryoshka's selection) run over
         every rank's rows (row_split.py).
modules  The SAEs are divided among the ranks (round-robin); the activations of each chunk are
         computed once (split by batches) and exchanged, and each rank trains its own SAEs on
         full batches: no gradient traffic at all.
latents  Every SAE's latents are split into contiguous slices, one per rank; every rank sees every
         batch, the top-k is global and exact, the reconstruction is the sum of the partial decodes
         (latent_shard.py). For dictionaries too wide for one device.

Both write one checkpoint and one manifest and the SAE folders from rank 0 (in `modules` mode the
SAEs are gathered there first), in the single-process layout. A rank that dies or hangs makes the
others fail with a clear message after at most `--dist-timeout` seconds (gloo on CPU, nccl on
GPU), never a silent hang.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ..activations.stream import ActivationStream, Chunk
from ..errors import UserError
from ..sae import ARCHITECTURES, SaeConfig, build_sae
from .latent_shard import check_latents_mode, gather_member, latent_dim, load_sharded, shard_member
from .members import Member, new_member
from .parallel import SingleProcess
from .row_split import RowSplit


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def parallel_for(cfg):
    """One process, or this rank's share of a torchrun job with more than one process."""
    return Distributed(cfg) if world_size() > 1 else SingleProcess()


class RankFailure(UserError):
    pass


class Comm:
    """The process group, and every collective training uses, with errors that say what happened."""

    def __init__(self, timeout_s: float, device: str):
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":  # one GPU per rank
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", self.rank)))
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        self.timeout_s = timeout_s
        self.is_main = self.rank == 0

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (RuntimeError, dist.DistBackendError, ConnectionError) as e:  # peer died, timed out, or reset
            raise RankFailure(
                f"distributed training: rank {self.rank}/{self.world} lost the other ranks during "
                f"{what} ({str(e).splitlines()[0][:200]}). A rank died or stalled for more than "
                f"--dist-timeout {self.timeout_s:g} s; see the first failing rank's log. The last "
                f"checkpoint is kept: rerun with --resume and the same number of processes."
            ) from e

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM, what: str = "all_reduce") -> torch.Tensor:
        self._call(what, dist.all_reduce, t, op=op)
        return t

    def all_gather(self, t: torch.Tensor, what: str = "all_gather") -> list[torch.Tensor]:
        """Same-shaped tensors of every rank, by rank."""
        out = [torch.empty_like(t) for _ in range(self.world)]
        self._call(what, dist.all_gather, out, t)
        return out

    def broadcast(self, t: torch.Tensor, what: str = "broadcast") -> torch.Tensor:
        self._call(what, dist.broadcast, t, src=0)
        return t

    def all_gather_object(self, obj, what: str = "all_gather") -> list:
        out = [None] * self.world
        self._call(what, dist.all_gather_object, out, obj)
        return out

    def all_gather_rows(self, t: torch.Tensor, what: str = "activation exchange") -> list[torch.Tensor]:
        """Gather [n_r, d] tensors of different n_r from every rank -> list by rank."""
        n = torch.tensor([t.shape[0]], dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        self._call(what, dist.all_gather, sizes, n)
        m = int(max(s.item() for s in sizes))
        pad = torch.zeros(m, *t.shape[1:], dtype=t.dtype, device=t.device)
        pad[: t.shape[0]] = t
        bufs = [torch.empty_like(pad) for _ in range(self.world)]
        self._call(what, dist.all_gather, bufs, pad)
        return [b[: int(s.item())] for b, s in zip(bufs, sizes)]

    def barrier(self) -> None:
        self._call("barrier", dist.barrier)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class DistributedActivationStream(ActivationStream):
    """ActivationStream whose LM batches are split over the ranks and exchanged: every rank ends
    with the chunk a single process computes (same batches, same order, same shuffle)."""

    def __init__(self, base: ActivationStream, comm: Comm):
        self.__dict__.update(base.__dict__)
        self.comm = comm
        # the exchange gathers hookpoint by hookpoint: ranks that list them in different orders would
        # silently swap two sites of one width (this happened: models.depth_order is now rank-independent)
        orders = comm.all_gather_object(list(self.hookpoints), "hookpoint check")
        if any(o != orders[0] for o in orders):
            raise RuntimeError(
                f"distributed training: the ranks order the hookpoints differently ({orders}); "
                f"this is a bug in saelab, please report it"
            )

    @torch.no_grad()
    def chunk(self, c: int) -> Chunk:
        batches = self.lm_batches(c)
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hookpoints}
        counts, lm_tokens, excluded = [], 0, 0
        for rows in batches[
            self.comm.rank :: self.comm.world
        ]:  # the same batches a single process runs, each on one rank
            acts, n, ex = self.forward(rows)
            for h, a in acts.items():
                parts[h].append(a)
            counts.append(next(iter(acts.values())).shape[0])
            lm_tokens += n
            excluded += ex
        meta = self.comm.all_gather_object((counts, lm_tokens, excluded), "activation exchange")
        full: dict[str, torch.Tensor] = {}
        for h in self.hookpoints:
            local = torch.cat(parts[h]) if parts[h] else torch.zeros(0, self.widths[h], device=self.device)
            by_rank = [g.split(cs) if cs else () for g, (cs, _, _) in zip(self.comm.all_gather_rows(local), meta)]
            ordered = [by_rank[j % self.comm.world][j // self.comm.world] for j in range(len(batches))]
            full[h] = torch.cat(ordered)
        return self.shuffled(c, full, sum(m[1] for m in meta), sum(m[2] for m in meta))


class Distributed(SingleProcess):
    """This rank's part of a torchrun job (see the module docstring)."""

    def __init__(self, cfg):
        # (--distributed's value is checked with the other options: TrainConfig.check_run)
        if cfg.loss != "local":
            raise UserError(
                f"--loss {cfg.loss}: torchrun training supports the local loss only; run e2e losses in "
                f"one process (without torchrun)"
            )
        if getattr(cfg, "finetune_fraction", None):
            raise UserError("--finetune-fraction: its kl+mse phase runs in one process; train without torchrun")
        caps = ARCHITECTURES[cfg.arch].capabilities  # the type declares its torchrun modes (sae/kind.py)
        if not caps.torchrun:
            raise UserError(f"--arch {cfg.arch} trains in one process (without torchrun): {caps.one_process_why}")
        if cfg.distributed == "data" and "data" not in caps.torchrun:
            # The loss does not decompose into per-rank shares weighted by target variance
            raise UserError(
                f"--arch {cfg.arch}: --distributed data would not give the single-process result "
                f"for this dictionary; use --distributed {' or '.join(caps.torchrun)} or one process"
            )
        if cfg.distributed == "modules" and "modules" not in caps.torchrun:
            raise UserError(
                f"--arch {cfg.arch}: --distributed modules is not supported; use --distributed "
                f"{' or '.join(caps.torchrun)}"
            )
        if cfg.distributed == "latents":  # before the process group and any model load
            check_latents_mode(cfg, world_size())
            if getattr(cfg, "compile", False):
                raise UserError(
                    "--compile with --distributed latents is not supported: the sharded dictionary "
                    "exchanges data between ranks inside its forward (untested under torch.compile); "
                    "use --distributed data or modules, or drop --compile"
                )
        self.mode, self.device = cfg.distributed, cfg.device
        self.comm = Comm(cfg.dist_timeout, cfg.device)
        self.is_main = self.comm.is_main
        if not self.is_main:
            os.environ["TQDM_DISABLE"] = "1"
        self._names: list[str] = []
        self._weights: dict[str, float] = {}
        self._row_split: dict[str, RowSplit] = {}  # data mode: each dictionary's batch-wide reductions

    def describe(self) -> dict:
        return {"world_size": self.comm.world, "distributed": self.mode}

    def check_resume(self, meta: dict, out) -> None:
        saved = (meta.get("world_size", 1), meta.get("distributed"))
        if saved != (self.comm.world, self.mode):
            raise UserError(
                f"--resume: the checkpoint in {out} was written by {saved[0]} process(es) "
                f"({saved[1] or 'single process'}); this run has {self.comm.world} ({self.mode}). "
                f"Resume with the same torchrun --nproc_per_node and --distributed"
            )

    def wrap_stream(self, stream):
        return DistributedActivationStream(stream, self.comm)

    def own(self, members: list[Member]) -> list[Member]:
        self._names = [m.name for m in members]
        if self.mode == "data":
            for m in members:
                m.sae.reductions = self._row_split[m.name] = RowSplit(self.comm, m.since_fired.device)
            return members
        if self.mode == "latents":
            return [shard_member(m, self.comm, self.device) for m in members]
        if len(members) < self.comm.world:
            raise UserError(
                f"--distributed modules: {len(members)} SAE(s) for {self.comm.world} ranks; "
                f"use --distributed data or fewer processes"
            )
        return members[self.comm.rank :: self.comm.world]

    def all_names(self, members) -> list[str]:
        return self._names

    # ------------------------------------------------------------ data-parallel step
    def attach(self, objective) -> None:
        if self.mode == "data":
            objective.shard = self.shard

    def shard(self, m: Member, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a batch, and its gradient weight (its share of the target variance)."""
        n = x.shape[0]
        split = n >= 4 * self.comm.world
        self._row_split[m.name].total_rows = n if split else None  # the batch's rows, before this rank's share
        if not split:  # a tiny last batch: every rank takes all of it, gradients averaged
            self._weights[m.name] = 1.0 / self.comm.world
            return x, y
        xs, ys = x.tensor_split(self.comm.world)[self.comm.rank], y.tensor_split(self.comm.world)[self.comm.rank]
        with torch.no_grad():
            t = ys * m.sae.out_scale
            local = (t - t.mean(0)).pow(2).sum()
            stats = torch.cat([t.new_tensor([t.shape[0]]), t.sum(0), t.pow(2).sum().reshape(1)]).double()
            self.comm.all_reduce(stats, what="variance reduction")
            N, s1, s2 = stats[0], stats[1:-1], stats[-1]
            total = (s2 - s1.pow(2).sum() / N).clamp_min(1e-12)
            self._weights[m.name] = float(local.double() / total)
        return xs, ys

    def reduce_grads(self, m: Member) -> None:
        """Weighted sum of every rank's gradients (one flat buffer), and shared buffers averaged."""
        if self.mode == "latents":  # the replicated parameters (b_dec): each rank holds a share of the gradient
            for name, p in m.sae.named_parameters():
                if latent_dim(m.sae, name) is None and p.requires_grad:
                    if p.grad is None:  # a transcoder's b_dec (a CLT's) has no term off rank 0 (`shared`)
                        p.grad = torch.zeros_like(p)
                    self.comm.all_reduce(p.grad, what="shared-parameter gradient sum")
            return
        if self.mode != "data":
            return
        params = [p for p in m.sae.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params]) * self._weights[m.name]
        self.comm.all_reduce(flat, what="gradient all-reduce")
        i = 0
        for p in params:
            p.grad.copy_(flat[i : i + p.numel()].view_as(p.grad))
            i += p.numel()
        for name, b in m.sae.named_buffers():
            if b.is_floating_point() and name not in ("in_scale", "out_scale"):  # BatchTopK threshold
                self.comm.all_reduce(b, what="buffer sync").div_(self.comm.world)

    def sync_fired(self, fired: torch.Tensor) -> torch.Tensor:
        if self.mode != "data":
            return fired
        return self.comm.all_reduce(fired.to(torch.int32), dist.ReduceOp.MAX, "dead-latent sync").bool()

    def sync_stats(self, stats: dict) -> None:
        """latents: l0 counts this rank's latents (summed over ranks), `dead` its slice (averaged)."""
        if self.mode == "latents":
            t = self.comm.all_reduce(torch.tensor([stats["l0"], stats["dead"]], dtype=torch.float64), what="statistics")
            stats["l0"], stats["dead"] = float(t[0]), float(t[1]) / self.comm.world

    def finalize(self, member: Member, x: torch.Tensor) -> None:
        """Every rank holds the same x here: a row-split selection stays local."""
        if member.name in self._row_split:
            self._row_split[member.name].total_rows = None
        super().finalize(member, x)

    def load_checkpoint(self, out, members: list[Member]) -> None:
        if self.mode == "latents":
            return load_sharded(out, members, self.comm, self.device)
        return super().load_checkpoint(out, members)

    # ------------------------------------------------------------ checkpoints and saving
    def gather(self, members: list[Member]) -> list[Member] | None:
        """modules: every SAE's state on rank 0 (None elsewhere); data: the local members (rank 0)."""
        if self.mode == "data":
            return members if self.comm.is_main else None
        if self.mode == "latents":
            full = [gather_member(m, self.comm) for m in members]
            return full if self.comm.is_main else None
        mine = {
            m.name: (
                m.sae.cfg.to_dict(),
                {k: v.cpu() for k, v in m.sae.state_dict().items()},
                [dict(s) for s in m.opt.state.values()],
                m.since_fired.cpu(),
                m.lr,
                m.stats,
            )
            for m in members
        }
        gathered = self.comm.all_gather_object(mine, "gathering SAEs")
        if not self.comm.is_main:
            return None
        merged = {k: v for g in gathered for k, v in g.items()}
        out = []
        for name in self._names:
            cfg, sd, opt_states, since, lr, stats = merged[name]
            sae = build_sae(SaeConfig.from_dict(cfg))
            sae.load_state_dict(sd)
            m = new_member(name, sae, lr, stats=stats)
            for p, st in zip(sae.parameters(), opt_states):
                m.opt.state[p] = st
            m.since_fired.copy_(since)
            out.append(m)
        return out

    def barrier(self) -> None:
        self.comm.barrier()

    def close(self) -> None:
        self.comm.close()
