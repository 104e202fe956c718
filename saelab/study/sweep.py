"""`saelab sweep`: train and evaluate a grid of loss type x (k or sparsity coefficient) with one
command, resumable, one run folder (with its manifest) per run, and `sweep.json` at the top.

Layout:  OUT/sweep.json                         grid, fixed configuration, status of each run
         OUT/<loss>/manifest.json              one training run per loss type: its values of k (or
         OUT/<loss>/<sae name>/cfg.json ...     coefficient) train together and share each forward
         OUT/<loss>/<sae name>/metrics.json    held-out metrics + `later_fvu`, `alive`
With `separate=True` every grid point is its own run: OUT/<loss>-k<k>/...

Resuming (just rerun the command): finished runs are skipped, runs with a checkpoint resume, a
run folder left without a checkpoint is trained again, and runs trained but not evaluated are
evaluated. A folder holding a sweep of another model, hookpoint, corpus or fixed option is
refused, so curves in one Pareto plot always come from one setting.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..evaluate.run import EvalE2EConfig, evaluate_e2e
from ..option_checks import check_types
from ..options import opt
from ..out_folder import finish, hold
from ..sae.registry import uses_k
from ..storage import read_json, write_json
from ..train.config import LOSSES, TrainConfig
from ..train.loop import train
from ..train.manifest import versions

SWEEP_FILE = "sweep.json"
GRID_KEYS = ("out", "loss", "k", "sparsity_coeff", "resume", "overwrite")
UNFIXED = ("threads", "device", "wandb", "checkpoint_every")  # may change between invocations


@dataclasses.dataclass
class SweepRun:
    loss: str
    values: list  # k values (topk/batchtopk) or sparsity coefficients
    folder: Path


def plan_runs(base: TrainConfig, out: Path, losses: list[str], separate: bool) -> list[SweepRun]:
    per_k = uses_k(base.arch)
    values = list(base.k if per_k else base.sparsity_coeff)
    runs = []
    for loss in losses:
        if separate:
            runs += [SweepRun(loss, [v], out / f"{loss}-{'k' if per_k else 'c'}{v:g}") for v in values]
        else:
            runs.append(SweepRun(loss, values, out / loss))
    return runs


def run_config(base: TrainConfig, run: SweepRun) -> TrainConfig:
    per_k = uses_k(base.arch)
    kw = {"k": run.values} if per_k else {"sparsity_coeff": run.values}
    ds = base.downstream_layers if run.loss == "e2e+ds" else None
    return dataclasses.replace(
        base, out=str(run.folder), loss=run.loss, resume=False, overwrite=False, downstream_layers=ds, **kw
    )


def _fixed(base: TrainConfig) -> dict:
    return {k: v for k, v in base.to_dict().items() if k not in GRID_KEYS + UNFIXED}


def check_folder(out: Path, base: TrainConfig) -> dict | None:
    """Refuse a folder that holds a sweep made with another model/hookpoint/corpus/fixed option."""
    p = out / SWEEP_FILE
    if not p.exists():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not a sweep folder (no {SWEEP_FILE}); choose another --out")
        return None
    old = read_json(p)
    fixed = _fixed(base)
    prev = old.get("fixed", {})
    diff = sorted(k for k in set(fixed) | set(prev) if fixed.get(k) != prev.get(k))
    if diff:
        what = ", ".join(f"{k}: {prev.get(k)!r} there, {fixed.get(k)!r} now" for k in diff[:6])
        kind = "a different model" if "model" in diff else "a different setting"
        raise UserError(
            f"{out} holds a sweep of {kind} ({what}); a sweep folder must hold one model, hookpoint and "
            f"corpus: use another --out"
        )
    return old


def run_status(run: SweepRun) -> str:
    f = run.folder
    if (f / "manifest.json").exists():
        saes = read_json(f / "manifest.json").get("saes", {})
        done = saes and all((Path(v["folder"]) / "metrics.json").exists() for v in saes.values())
        return "done" if done else "trained"
    if (f / "checkpoint.safetensors").exists():
        return "checkpoint"
    return "partial" if f.exists() and any(f.iterdir()) else "new"


@dataclass
class SweepConfig:
    """`saelab sweep`'s own options; the rest of its command line is a TrainConfig (less loss / resume /
    overwrite), the fixed part of every run; its --out is the sweep folder."""

    losses: list[str] = opt(default_factory=lambda: ["local", "e2e", "e2e+ds"], help="loss types")
    separate: bool = opt(False, "one run folder per grid point (no shared forwards)")
    eval_tokens: int = opt(50_000, "held-out tokens for FVU / L0 / alive")
    eval_ce_tokens: int = opt(8192, "held-out tokens for KL / CE / later-layer FVU")

    def validate(self) -> None:
        check_types(self)  # the grid's values: run_sweep


def sweep(base: TrainConfig, cfg: SweepConfig) -> dict:
    """run_sweep into base.out."""
    cfg.validate()
    return run_sweep(
        base,
        base.out,
        cfg.losses,
        separate=cfg.separate,
        eval_tokens=cfg.eval_tokens,
        eval_ce_tokens=cfg.eval_ce_tokens,
    )


def run_sweep(
    base: TrainConfig,
    out: str,
    losses: list[str],
    separate: bool = False,
    eval_tokens: int = 50_000,
    eval_ce_tokens: int = 8192,
) -> dict:
    out = Path(out)
    bad = [x for x in losses if x not in LOSSES]
    if not losses or bad:
        raise UserError(f"--losses: unknown {bad or 'none given'}; choose from {', '.join(LOSSES)}")
    if eval_tokens < 1 or eval_ce_tokens < 1:
        raise UserError("--eval-tokens and --eval-ce-tokens must be positive (the Pareto plot needs CE increase)")
    runs = plan_runs(base, out, losses, separate)
    for r in runs:  # every run's configuration is validated before anything trains
        run_config(base, r).validate()
    old = check_folder(out, base)

    record = {
        "command": "sweep",
        "fixed": _fixed(base),
        "losses": losses,
        "separate": separate,
        "values": runs[0].values if not separate else sorted({v for r in runs for v in r.values}),
        "axis": "k" if uses_k(base.arch) else "sparsity_coeff",
        "eval": {"tokens": eval_tokens, "ce_tokens": eval_ce_tokens},
        "versions": versions(),
        "runs": dict((old or {}).get("runs", {})),
    }
    hold(out)  # the sweep folder's lock: a second sweep into it is refused (each run folder has its own)
    write_json(out / SWEEP_FILE, record)
    for i, r in enumerate(runs):
        status = run_status(r)
        name = r.folder.name
        print(
            f"saelab sweep: run {i + 1}/{len(runs)} {name} ({r.loss}, {record['axis']} {r.values}): {status}",
            flush=True,
        )
        t = time.time()
        if status in ("new", "partial", "checkpoint"):
            cfg = run_config(base, r)
            cfg = dataclasses.replace(cfg, resume=status == "checkpoint", overwrite=status == "partial")
            train(cfg)
            status = "trained"
        if status == "trained":
            evaluate_run(r.folder, eval_tokens, eval_ce_tokens, device=base.device)
        record["runs"][name] = {
            "loss": r.loss,
            "values": r.values,
            "folder": str(r.folder),
            "status": "done",
            "wall_s_this_invocation": time.time() - t,
        }
        write_json(out / SWEEP_FILE, record)
    finish(out)
    return record


def evaluate_run(folder: Path, tokens: int, ce_tokens: int, device: str = "cpu") -> None:
    """Evaluate every SAE of a training run (its manifest lists them), later-layer metrics included."""
    manifest = read_json(Path(folder) / "manifest.json")
    dirs = [str(v["folder"]) for v in manifest["saes"].values()]
    evaluate_e2e(EvalE2EConfig(sae_dirs=dirs, tokens=tokens, ce_tokens=ce_tokens, device=device, overwrite=True))
