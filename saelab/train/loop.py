"""The one training loop: every objective (local, e2e, e2e+ds), every source (LM stream, activation
cache), one process or many. It owns resume, checkpoints, progress, the log, the divergence stop
and the save; objectives (objectives.py) and sources (sources.py) are small pieces behind it, and
distributed training (distributed.py) is a `Parallel` strategy handed in, not a different loop.

Read top to bottom: resolve the plan (plan.py: every option checked once, before any weights load)
-> open inputs -> build SAEs -> resume -> for each batch: one step for every SAE -> finalize -> save.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..out_folder import TRAINING_RUN, check_space, open_out
from ..sae.folder import Provenance, save_sae
from ..sae.replacement import write_replacement
from ..storage import trim_jsonl
from .checkpoint import CHECKPOINT, read_checkpoint_meta, save_checkpoint
from .config import TrainConfig
from .curves import LOG, plot_train_log
from .distributed import parallel_for
from .finetune import make_objective
from .init_from import first_batch, members_from_dictionary
from .manifest import write_manifest
from .members import Member, build_members
from .parallel import SingleProcess
from .plan import TrainingPlan, resolve
from .resume_identity import check_options, check_resume_identity, resume_identity
from .sources import Batch, TrainingInputs, open_inputs, precheck


class TrainingDiverged(UserError):
    pass


@dataclass
class Position:
    """Where a run is; checkpointed, so a resumed run continues exactly."""

    cursor: int = 0  # the source's resume position (next chunk / next e2e step)
    lm_tokens: int = 0  # LM positions consumed
    steps: int = 0  # optimiser steps taken
    excluded: int = 0  # sink/outlier positions left out
    wall_s: float = 0.0


class TrainingRun:
    def __init__(self, plan: TrainingPlan | TrainConfig, parallel=None):
        self.plan = plan if isinstance(plan, TrainingPlan) else resolve(plan)
        cfg = self.plan.config
        self.init, self.patterns = self.plan.init, list(self.plan.patterns)
        self.cfg, self.out = cfg, Path(cfg.out)
        self.parallel = parallel or SingleProcess()
        self.parallel.check(cfg)
        # --resume continues this folder's run (checked below); otherwise the folder must be new, empty, or
        # (with --overwrite) a training run, whose own files alone are removed before the first batch
        self.folder = open_out(self.out, TRAINING_RUN, cfg.overwrite, inputs=_inputs(cfg), resume=cfg.resume)
        precheck(cfg, self.patterns)
        self.resume_meta = read_checkpoint_meta(self.out) if cfg.resume else None
        if self.resume_meta:
            self.parallel.check_resume(self.resume_meta, self.out)
            check_options(self.resume_meta, cfg, self.out)  # a changed option, named, before the model loads

    # ------------------------------------------------------------ the run
    def run(self) -> list[Path]:
        cfg, par = self.cfg, self.parallel
        logger = _wandb(cfg) if par.is_main else None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        inputs = open_inputs(cfg, self.patterns, par.wrap_stream)
        everyone = (
            members_from_dictionary(cfg, self.init, inputs.sites, inputs.widths)
            if self.init
            else build_members(cfg, inputs.sites, inputs.widths)
        )
        par.barrier()  # every rank has checked --out (open_out refuses a locked folder) before rank 0 locks it
        if par.is_main:  # the SAE folders (weights) and the checkpoint (weights + two Adam moments): 4 copies
            check_space(self.out, 4 * sum(p.numel() * p.element_size() for m in everyone for p in m.sae.parameters()))
            self.folder.prepare()  # the folder's lock; --overwrite: what the last run wrote is moved aside
        par.barrier()
        self.identity = resume_identity(cfg, [m.name for m in everyone], inputs.data["fingerprint"], par.describe())
        members = par.own(everyone)
        objective = make_objective(cfg, inputs.lm.model if inputs.lm else None, members, inputs.sink, inputs.special)
        par.attach(objective)
        pos = self._resume(members)
        dead_tokens = dead_horizon(cfg, self.init.folder.provenance.training_tokens if self.init else None)
        source = inputs.source
        t0 = time.time() - pos.wall_s
        next_ckpt = (pos.lm_tokens // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        bar = tqdm(
            total=source.total_lm_tokens,
            initial=pos.lm_tokens,
            unit="tok",
            unit_scale=True,
            desc="train" if cfg.loss == "local" else f"train ({cfg.loss})",
            smoothing=0.05,
            dynamic_ncols=True,
            disable=not par.is_main,
        )
        t_loop = time.time()
        last_inputs: dict[str, torch.Tensor] = {}  # recent raw SAE inputs, for `finalize` (BatchTopK threshold)
        self._inputs_from = None  # the data last_inputs was read from (a chunk's sample serves all its batches)
        for batch in source.batches(pos.cursor):
            excluded = self._step(members, objective, batch, pos.steps == 0, dead_tokens, last_inputs)
            pos.steps += 1
            pos.excluded += batch.excluded + excluded
            if not batch.lm_tokens:
                continue
            pos.lm_tokens += batch.lm_tokens
            bar.update(batch.lm_tokens)
            bar.set_postfix_str(_postfix(members, batch))
            self._append_log(members, pos, time.time() - t0)
            if logger:
                logger.log(
                    {f"{m.name}/{k}": v for m in members for k, v in m.stats.items()} | {"tokens": pos.lm_tokens}
                )
            if pos.lm_tokens >= next_ckpt and pos.lm_tokens < source.total_lm_tokens:
                pos.cursor, pos.wall_s = batch.cursor, time.time() - t0
                self._checkpoint(members, pos)
                next_ckpt = (pos.lm_tokens // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        bar.close()
        for m in members:
            if m.name in last_inputs:
                par.finalize(m, last_inputs[m.name])
        pos.wall_s = time.time() - t0
        return self._save(members, pos, inputs, objective.record(), time.time() - t_loop)

    # ------------------------------------------------------------ one step
    def _step(
        self, members: list[Member], objective, batch: Batch, first: bool, dead_tokens: int, last_inputs: dict
    ) -> int:
        """One optimiser step of every SAE on `batch`; returns positions the objective left out.

        Gradients accumulate over the batch's parts (e2e micro-batches); each SAE steps right after
        its backward on the last part, so only one SAE's gradients are alive at a time (local)."""
        cfg = self.cfg
        factor = objective.lr_factor(batch, cfg.warmup_fraction, cfg.decay_fraction)
        fired = {m.name: torch.zeros(m.sae.cfg.d_sae, dtype=torch.bool, device=m.since_fired.device) for m in members}
        sums: dict[str, dict[str, float]] = {m.name: {} for m in members}
        excluded = 0
        parts = objective.split(batch)
        for j, (part, weight) in enumerate(parts):
            shared = objective.shared(part)
            data = batch.sample or part  # what init and finalize read: a chunk's sample, or this part
            # io() does not depend on the SAEs' weights, and finalize reads only the last step's last part
            # (or the last chunk's sample): read it there and for the init, not for every micro-batch
            read = first or (j == len(parts) - 1 and data is not self._inputs_from)
            for i, m in enumerate(members):
                if read:
                    x, y = objective.io(m, data, shared)
                    if first and self.init:  # a copied dictionary keeps its weights (only a free decoder's scale)
                        first_batch(m.sae, x[:16384])
                    elif first:  # scales and decoder bias from the first batch's data
                        m.sae.init_from_data(x[:16384], y[:16384], cfg.bias_init)
                    last_inputs[m.name] = x[:16384]
                r = objective.loss(m, part, shared, m.since_fired >= dead_tokens)
                if not torch.isfinite(r.loss) or r.loss.item() > 1e4:
                    raise TrainingDiverged(
                        f"{m.name}: loss became {r.loss.item():.3g}; stopped. The last good checkpoint in {self.out} "
                        f"is kept; lower --lr (now {m.lr:.2g}) and rerun with --resume or from scratch"
                    )
                (r.loss * weight).backward()
                fired[m.name] |= r.fired.to(fired[m.name].device)
                for key, v in r.stats.items():
                    sums[m.name][key] = sums[m.name].get(key, 0.0) + v * weight
                excluded += r.excluded if i == 0 else 0
                if j == len(parts) - 1:
                    self._optimise(m, factor, batch.positions, fired[m.name], dead_tokens, sums[m.name])
            if read:
                self._inputs_from = data
            first = False
        return excluded

    def _optimise(
        self, m: Member, factor: float, positions: int, fired: torch.Tensor, dead_tokens: int, stats: dict
    ) -> None:
        """One optimiser step of one SAE, then its dead-latent counters and smoothed statistics."""
        self.parallel.reduce_grads(m)
        for g in m.opt.param_groups:
            g["lr"] = m.lr * factor * g.get("lr_scale", 1.0)  # lr_scale: SparseCoder.optimizer_groups
        m.sae.remove_parallel_decoder_grad()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        m.sae.normalize_decoder()
        m.since_fired += positions
        m.since_fired[self.parallel.sync_fired(fired)] = 0
        stats["dead"] = (m.since_fired >= dead_tokens).float().mean().item()
        self.parallel.sync_stats(stats)
        m.smooth(stats)

    # ------------------------------------------------------------ resume, checkpoints, log
    def _resume(self, members: list[Member]) -> Position:
        meta = self.resume_meta
        if not meta:
            return Position()
        check_resume_identity(meta, self.cfg, self.identity, self.out)
        self.parallel.load_checkpoint(self.out, members)
        for m in members:  # the smoothed statistics continue too, so the manifest matches an uninterrupted run
            m.stats = dict(meta.get("stats", {}).get(m.name, {}))
        pos = Position(**meta["position"])
        if self.parallel.is_main:  # the log continues from the checkpoint: no cut line, no repeated steps
            trim_jsonl(self.out / LOG, lambda r: isinstance(r.get("tokens"), int) and r["tokens"] <= pos.lm_tokens)
        print(f"saelab: resuming at {pos.lm_tokens:,} tokens (step {pos.steps})", flush=True)
        return pos

    def _checkpoint(self, members: list[Member], pos: Position) -> None:
        gathered = self.parallel.gather(members)
        if gathered is not None:
            meta = {
                "identity": self.identity[0],
                "resume_identity": self.identity[1],
                "position": asdict(pos),
                "stats": {m.name: m.stats for m in gathered},
            }
            save_checkpoint(self.out, gathered, meta | self.parallel.describe())
        self.parallel.barrier()

    def _append_log(self, members: list[Member], pos: Position, wall_s: float) -> None:
        """One JSON line of every SAE's smoothed training stats (train_log.jsonl: the curves)."""
        if not self.parallel.is_main:
            return
        record = {
            "tokens": pos.lm_tokens,
            "steps": pos.steps,
            "wall_s": round(wall_s, 2),
            "saes": {m.name: {k: round(v, 5) for k, v in m.stats.items()} for m in members},
        }
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------ save
    def _save(
        self, members: list[Member], pos: Position, inputs: TrainingInputs, objective: dict, loop_s: float
    ) -> list[Path]:
        cfg, par = self.cfg, self.parallel
        gathered = par.gather(members)
        folders = [self.out / n for n in par.all_names(members)]
        if gathered is not None:
            folders = []
            for m in gathered:
                prov = Provenance(
                    model_spec=cfg.model,
                    model_name=inputs.model_name,
                    corpus=inputs.data["source"],
                    text_field=inputs.data["text_field"],
                    context=cfg.context,
                    heldout_fraction=inputs.data["heldout_fraction"],
                    data_fingerprint=inputs.data["fingerprint"],
                    sink=inputs.sink,
                    training_tokens=pos.lm_tokens,
                    objective=objective,
                    model_b=cfg.model_b,
                )
                extra = {"lr": m.lr, "steps": pos.steps, "seed": cfg.seed, "train_stats": m.stats}
                if self.init:
                    extra["init_from"] = self.init.record
                if "activation_cache" in inputs.data:
                    extra["activation_cache"] = inputs.data["activation_cache"]
                folders.append(save_sae(m.sae, self.out / m.name, prov, extra))
            write_manifest(
                self.out,
                cfg,
                inputs.data,
                pos,
                loop_s,
                {m.name: (f, m.stats) for m, f in zip(gathered, folders)},
                par.describe(),
            )
            plot_train_log(self.out)
            (self.out / CHECKPOINT).unlink(missing_ok=True)
            if self.plan.layers:  # a replacement folder (sae/replacement.py): its manifest is the last file written
                kind = "clt" if cfg.kind.capabilities.multi_site else "plt"
                write_replacement(self.out, kind, self.plan.layers, cfg.model, inputs.model_name, folders)
            self.folder.done()  # completed: what --overwrite replaced goes, the lock is released
        par.barrier()
        par.close()
        print(
            f"saelab: trained {pos.lm_tokens:,} tokens ({pos.steps:,} steps)"
            + (f"; --tokens {cfg.tokens:,} rounded down to whole batches" if pos.lm_tokens != cfg.tokens else ""),
            flush=True,
        ) if par.is_main else None
        return folders


def train(cfg: TrainConfig) -> list[Path]:
    """Train every SAE of `cfg` (in this process, or as one rank of a torchrun job) -> SAE folders."""
    plan = resolve(cfg)  # torchrun's rules (Distributed) then see --init-from's adopted options
    return TrainingRun(plan, parallel_for(plan.config)).run()


def _inputs(cfg: TrainConfig) -> tuple[str, ...]:
    """The folders a run reads (an activation cache, an SAE to start from): never inside what it replaces."""
    return tuple(p for p in (cfg.from_activations, cfg.init_from) if p and Path(p).exists())


def _postfix(members: list[Member], batch: Batch) -> str:
    s = members[0].stats
    parts = [f"{k} {s[k]:.4f}" if k == "kl" else f"{k} {s[k]:.3g}" for k in ("kl", "ds_mse") if s.get(k)]
    parts += [f"fvu {s['fvu']:.3f}", f"l0 {s['l0']:.1f}", f"dead {100 * s['dead']:.1f}%"]
    if batch.excluded:
        parts.append(f"excl {100 * batch.excluded / max(1, batch.lm_tokens):.2f}%")
    return " ".join(parts) + (f" (+{len(members) - 1} SAEs)" if len(members) > 1 else "")


def _wandb(cfg: TrainConfig):
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError as e:
        raise UserError("--wandb needs `pip install wandb`") from e
    return wandb.init(project=cfg.wandb, config=cfg.to_dict())


def dead_horizon(cfg, start_tokens: int | None = None) -> int:
    """Tokens a latent may stay unfired before it counts as dead (and AuxK works on it): a tenth of
    the budget, at least one batch. A run that starts from a dictionary (--init-from) counts the
    tokens that dictionary was trained on: a 50k-token fine-tune of a 1M-token SAE would otherwise
    call every latent rarer than 1 in 5k tokens dead and spend AuxK reviving healthy rare features."""
    budget = cfg.tokens + (start_tokens or 0)
    return cfg.dead_tokens or max(cfg.batch_tokens, min(10_000_000, budget // 10))
