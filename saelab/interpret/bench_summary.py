"""The autointerp summary that `saelab bench` folds into its report: an interpretation run (`saelab explain` / `saelab score` output) read with
the interpret stage's own loader and summary (`records.load_run`, `report.summarise`), cut down to
what the bench report shows: explained latents and each scorer's mean primary metric."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .records import load_run
from .report import summarise
from .scorers.base import PRIMARY


def autointerp_summary(run_dir: str | Path) -> dict:
    if not (Path(run_dir) / "manifest.json").is_file():
        raise UserError(f"--interp {run_dir} is not an interpretation run (no manifest.json)")
    s = summarise(load_run(Path(run_dir)))
    scorers = {}
    for name, sc in s["scorers"].items():
        prim = [m for m in PRIMARY.get(name, []) if m in sc["metrics"]] or list(sc["metrics"])[:1]
        scorers[name] = {"scored": sc["scored"], "failed": sc["failed"], "primary": {m: sc["metrics"][m] for m in prim}}
        if "validity" in sc:  # right-vs-wrong AUC and verdict (`score --validity`)
            scorers[name]["validity"] = {k: sc["validity"][k] for k in ("auc", "ci_low", "ci_high", "n", "verdict")}
    return {
        "run": s["run"],
        "label": s["label"],
        "dictionary": s["dictionary"],
        "latents": s["latents"],
        "explained": s["explained"],
        "explain_failed": s["explain_failed"],
        "scorers": scorers,
    }
