"""`saelab train --seeds N`: N runs of one configuration that differ only in --seed (seed, seed + 1, ...),
trained one after another into OUT/seed-<S>/. Each is a plain run folder (its manifest records --seed S
and no --seeds), so `--resume` continues each on its own and `saelab bench` groups them by configuration
(seed_identity.py) exactly as it groups runs trained by separate `saelab train --seed S` commands.
With --from-activations every seed reads the same cache, so the LM runs once for all of them.

Every seed's folder is checked before the first one trains (a folder in the way fails now, not after
hours): with --resume, a seed whose folder holds a checkpoint resumes, a finished one is kept as it is,
and one with no run yet starts fresh."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..out_folder import TRAINING_RUN, kind_of, open_out, read_manifest
from .checkpoint import CHECKPOINT
from .config import TrainConfig
from .loop import _inputs, train
from .resume_identity import FREE_OPTIONS, option_differences

SEED_FOLDER = "seed-{}"


def seed_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """One plain config per seed: --seed S, --out OUT/seed-<S>, no --seeds."""
    return [
        replace(cfg, seed=s, seeds=None, out=str(Path(cfg.out) / SEED_FOLDER.format(s)))
        for s in range(cfg.seed, cfg.seed + (cfg.seeds or 1))
    ]


def _finished(folder: Path) -> bool:
    """A completed training run: its manifest lists its dictionaries and no checkpoint is left."""
    m = read_manifest(folder) or {}
    return kind_of(folder) is TRAINING_RUN and isinstance(m.get("saes"), dict) and not (folder / CHECKPOINT).exists()


def plan_seeds(cfg: TrainConfig) -> list[tuple[TrainConfig, str]]:
    """(config, what to do: "train" | "resume" | "done") per seed, every folder checked first."""
    if not cfg.seeds:
        raise UserError("plan_seeds needs --seeds")
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; --seeds writes run folders OUT/seed-<S>/ under it")
    plan = []
    for c in seed_configs(cfg):
        folder = Path(c.out)
        if cfg.resume and (folder / CHECKPOINT).exists():
            plan.append((c, "resume"))
            continue
        if cfg.resume and _finished(folder):
            recorded = (read_manifest(folder) or {}).get("config") or {}
            diffs = option_differences({k: v for k, v in recorded.items() if k not in FREE_OPTIONS}, c)
            if diffs:
                raise UserError(
                    f"--resume: {folder} holds a finished run made with {', '.join(diffs)}; "
                    f"pass --overwrite without --resume to train it again, or restore those options"
                )
            plan.append((c, "done"))
            continue
        c = replace(c, resume=False)
        open_out(c.out, TRAINING_RUN, c.overwrite, inputs=_inputs(c))  # refuses a folder in the way, touches nothing
        plan.append((c, "train"))
    return plan


def train_seeds(cfg: TrainConfig, quiet: bool = False) -> list[Path]:
    """Train (or resume, or keep) every seed's run -> all their SAE folders, seed by seed."""
    folders: list[Path] = []
    plan = plan_seeds(cfg)
    for i, (c, action) in enumerate(plan):
        if not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 says it
            print(f"saelab: seed {c.seed} ({i + 1} of {len(plan)}): {action} -> {c.out}", flush=True)
        if action == "done":
            saes = (read_manifest(Path(c.out)) or {}).get("saes", {})
            folders += [Path(c.out) / name for name in saes]
        else:
            folders += [Path(f) for f in train(c)]
    return folders
