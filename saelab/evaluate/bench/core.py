"""Core: held-out reconstruction and splice (FVU, cosine, dead fraction, CE increase, KL, CE
recovered) of each SAE folder, measured by the `saelab evaluate` code (evaluate/metrics.py) on the
folders' shared held-out rows. Baselines are not measured here."""

from __future__ import annotations

from ..metrics import EvalBudget, measure
from ..results import DESCRIPTIONS
from .metric import BenchState, Metric, Table, by_l0

COLUMNS = ["l0", "fvu", "cosine", "dead_fraction", "ce_increase", "kl", "ce_recovered_zero"]


def compute(b: BenchState) -> dict:
    cfg = b.cfg
    res, firing = measure(
        b.lm.model,
        b.lm.tokenizer,
        [(f.sae, f.provenance.sink) for f in b.folders],
        b.rows,
        EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens),
        cfg.device,
    )
    for n, m, f in zip(b.names, res, firing):
        b.l0[n] = m.l0
        b.firing[n] = (f, m.eval_tokens)  # diagnostics reads them
    return {
        "tokens": cfg.tokens,
        "ce_tokens": cfg.ce_tokens,
        "dictionaries": [{"dictionary": n, **m.to_dict()} for n, m in zip(b.names, res)],
        "descriptions": DESCRIPTIONS,
    }


def tables(core: dict) -> list[Table]:
    rows = [[r["dictionary"]] + [r.get(c) for c in COLUMNS] for r in core["dictionaries"]]
    return [("Core (held-out reconstruction and splice; SAEs only)", ["dictionary"] + COLUMNS, rows)]


def panel(ax, core: dict, l0s: dict) -> None:
    ds = core["dictionaries"]
    by_l0(ax, [d["dictionary"] for d in ds], [d["fvu"] for d in ds], l0s, ["sae"] * len(ds), "FVU")
    ax.set_title("core: FVU (held out)")


METRIC = Metric(
    "core",
    "held-out reconstruction and splice of each SAE (FVU, cosine, dead fraction, CE increase, KL)",
    compute,
    tables,
    panel,
    default=True,
    needs_model=True,
)
