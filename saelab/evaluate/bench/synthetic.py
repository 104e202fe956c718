"""Synthetic ground truth: for SAEs trained on `saelab synthetic` data, how many of the planted
features each recovers (evaluate/synthetic_recovery.py); a folder without ground truth gets its
error in place of a report. Needs no model."""

from __future__ import annotations

from ...errors import UserError
from .metric import BenchState, Metric, Table, by_l0

COLUMNS = ["recovered", "mmcs_truth", "mmcs_decoder", "latent_precision", "latent_recall", "dead", "l0"]


def compute(b: BenchState) -> dict:
    # imported only here: the synthetic stage is optional for every other metric
    from ..synthetic_recovery import recovery_report

    rows_out = []
    for f, n in zip(b.folders, b.names):
        try:
            rows_out.append({"dictionary": n, "report": recovery_report(f)})
        except UserError as e:
            rows_out.append({"dictionary": n, "report": None, "error": str(e)})
    return {"dictionaries": rows_out}


def tables(sy: dict) -> list[Table]:
    rows = [
        [r["dictionary"]]
        + (
            [r["report"].get(c) for c in COLUMNS]
            if r.get("report")
            else [r.get("error", "n/a")] + [None] * (len(COLUMNS) - 1)
        )
        for r in sy["dictionaries"]
    ]
    return [("Synthetic ground truth", ["dictionary"] + COLUMNS, rows)]


def panel(ax, sy: dict, l0s: dict) -> None:
    ds = [d for d in sy["dictionaries"] if d.get("report")]
    by_l0(
        ax,
        [d["dictionary"] for d in ds],
        [d["report"]["recovered"] for d in ds],
        l0s,
        ["sae"] * len(ds),
        "recovered (cos >= 0.9)",
    )
    ax.set_title("synthetic ground truth")


METRIC = Metric(
    "synthetic",
    "recovery of the planted features of `saelab synthetic` data (SAEs trained on it)",
    compute,
    tables,
    panel,
)
