"""Core: held-out reconstruction and splice (FVU, cosine, dead fraction, CE increase, KL, CE
recovered) of each SAE folder, measured by the `saelab evaluate` code (evaluate/metrics.py) on the
folders' shared held-out rows. Baselines are not measured here."""

from __future__ import annotations

import numpy as np

from ..metrics import EvalBudget, measure
from ..results import DESCRIPTIONS
from .bootstrap import RESAMPLES, bootstrap_ratios, noise_block, noise_tables
from .metric import BenchState, Metric, Table, by_l0

COLUMNS = ["l0", "fvu", "cosine", "dead_fraction", "ce_increase", "kl", "ce_recovered_zero"]


def compute(b: BenchState) -> dict:
    cfg = b.cfg
    per_row: list[dict] = []
    res, firing = measure(
        b.lm.model,
        b.lm.tokenizer,
        [(f.sae, f.provenance.sink) for f in b.folders],
        b.rows,
        EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens),
        cfg.device,
        per_row,
    )
    for n, m, f in zip(b.names, res, firing):
        b.l0[n] = m.l0
        b.firing[n] = (f, m.eval_tokens)  # diagnostics reads them
    return {
        "tokens": cfg.tokens,
        "ce_tokens": cfg.ce_tokens,
        "dictionaries": [{"dictionary": n, **m.to_dict()} for n, m in zip(b.names, res)],
        "descriptions": DESCRIPTIONS,
        "noise": core_noise(per_row, b.names, cfg.seed),
        "ce_noise": ce_noise(per_row, b.names, cfg.seed),
    }


def core_noise(per_row: list[dict], names: list[str], seed: int = 0, resamples: int = RESAMPLES) -> dict | None:
    """FVU and cosine with their bootstrap over held-out rows (tokens of a row are not independent, so the
    row is the unit): per SAE the `measure` per-row sums (evaluate/metrics.py PassStats.rows), all SAEs on
    the same rows (paired). KL and CE: `ce_noise`, over the CE pass's own (fewer) rows."""
    if not per_row or not len(per_row[0]["n"]):
        return None
    series = [(q, n) for q in ("fvu", "cosine") for n in names]
    num = np.stack([r["err"] for r in per_row] + [r["cos"] for r in per_row], 1)  # [rows, 2 * SAEs]
    den = np.stack([r["var"] for r in per_row] + [r["n"] for r in per_row], 1)
    point, boot, n = bootstrap_ratios(num, den, resamples, seed)
    return noise_block(point, boot, n, series, seed=seed, smallest=n, unit="held-out rows")


def ce_noise(per_row: list[dict], names: list[str], seed: int = 0, resamples: int = RESAMPLES) -> dict | None:
    """CE recovered (zero ablation), KL and CE increase with their bootstrap over the CE pass's held-out rows
    (--ce-tokens of them; metrics.py `_ce_rows`). Each is a ratio of per-row sums, resampled as one:
    CE recovered = sum(ce_zero - ce_sae) / sum(ce_zero - ce_clean), KL = sum(kl) / sum(n), CE increase =
    sum(ce_sae - ce_clean) / sum(n), so the point value is `saelab eval`'s. All SAEs on the same rows (paired)."""
    if not per_row or not len(per_row[0].get("n_pred", ())):
        return None
    quantities = {
        "ce_recovered_zero": lambda r: (r["ce_zero"] - r["ce_sae"], r["ce_zero"] - r["ce_clean"]),
        "kl": lambda r: (r["kl"], r["n_pred"]),
        "ce_increase": lambda r: (r["ce_sae"] - r["ce_clean"], r["n_pred"]),
    }
    series = [(q, n) for q in quantities for n in names]
    parts = [f(r) for f in quantities.values() for r in per_row]
    num, den = np.stack([p[0] for p in parts], 1), np.stack([p[1] for p in parts], 1)  # [rows, 3 * SAEs]
    point, boot, n = bootstrap_ratios(num, den, resamples, seed)
    return noise_block(
        point, boot, n, series, ["ce_recovered_zero", "kl"], seed=seed, smallest=n, unit="held-out rows of the CE pass"
    )


def tables(core: dict) -> list[Table]:
    rows = [[r["dictionary"]] + [r.get(c) for c in COLUMNS] for r in core["dictionaries"]]
    out = [("Core (held-out reconstruction and splice; SAEs only)", ["dictionary"] + COLUMNS, rows)]
    out += noise_tables("Core", core["noise"]) if core.get("noise") else []
    return out + (noise_tables("Core, splice", core["ce_noise"]) if core.get("ce_noise") else [])


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
