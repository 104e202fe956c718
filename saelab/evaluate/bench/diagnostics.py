"""Diagnostics for known failure modes of a trained SAE, each with what it means (MEANINGS, shown in the report):

- dense latents: firing on more than DENSE (10%) of held-out tokens;
- dead latents (never fired on the held-out tokens) and ultra-rare ones (0 < frequency < ULTRA_RARE = 1e-5;
  only resolvable when at least 1 / ULTRA_RARE tokens were read, otherwise reported as n/a);
- decoder-norm outliers: rows of W_dec whose norm has a robust z-score |0.6745 (x - median) / MAD| > OUTLIER_Z
  (Iglewicz & Hoaglin); on a unit-norm decoder the MAD is 0, so the scale is floored at NORM_FLOOR of the
  median: any row off by more than ~0.5% is then an outlier, and a decoder with none is reported as normalised;
- absorption by frequency band: absorption.py's per-letter numbers grouped by the held-out firing frequency of
  each letter's first main latent (do rare or frequent parent latents lose their place to children?).

Frequencies are the core metric's (the same `saelab evaluate` pass on `--tokens` held-out non-sink positions,
stashed in `state.firing`); without core the same pass runs here. SAE folders only: the dense baselines fire on
every token and the random baseline has no training to diagnose."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..metrics import EvalBudget, reconstruction_metrics
from .metric import BenchState, Metric, Table, fmt

DENSE = 0.1
ULTRA_RARE = 1e-5
OUTLIER_Z = 3.5
NORM_FLOOR = 1e-3
SHOW = 5  # latent ids listed per diagnostic
BANDS = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # upper edges of the frequency bands below "dense"
HIST_EDGES = [round(-7 + 0.25 * i, 2) for i in range(29)]  # log10 firing frequency, -7 .. 0

MEANINGS = [
    (
        "dense (> 10% of tokens)",
        "a latent on this often is rarely one interpretable feature: it tends to carry a direction the others leave "
        "(often the mean or a position signal); a few are common, many mean the sparsity budget is spent on them",
    ),
    (
        "dead",
        "never fired on the held-out tokens: capacity the dictionary paid for and does not use (a dead fraction "
        "above a few percent says the training's revival, e.g. AuxK, did not reach them)",
    ),
    (
        "ultra-rare (< 1e-5)",
        "fires, but so seldom that its examples and any score of it rest on a handful of tokens; measurable only "
        "with at least 100,000 held-out tokens",
    ),
    (
        "decoder-norm outliers",
        "latents whose decoder row is far larger or smaller than the rest (robust z > 3.5): a large one can dominate "
        "reconstructions and steering, a tiny one writes almost nothing; where every row has one norm (TopK and other "
        "unit-norm decoders, rescaled or not) the report says normalised",
    ),
    (
        "absorption by band",
        "absorption (a child latent firing in its parent's place, Chanin et al. 2024) per frequency band of the "
        "parent's main latent: rising in one band says the feature splitting there hides the parent feature",
    ),
]


def band_of(f: float) -> str:
    """The frequency band label of a firing frequency."""
    if f <= 0:
        return "dead"
    lo = 0.0
    for hi in BANDS:
        if f < hi:
            return f"< {hi:g}" if lo == 0 else f"{lo:g} .. {hi:g}"
        lo = hi
    return f">= {BANDS[-1]:g} (dense)"


def band_order() -> list[str]:
    return ["dead"] + [band_of(x) for x in (0.5 * BANDS[0], *(2 * b for b in BANDS))]


def firing_diagnostics(freq: torch.Tensor, n_tokens: int) -> dict:
    """Dead, ultra-rare and dense latents of one dictionary from its per-latent firing frequency [d_sae]."""
    f = freq.cpu()  # compared in its own dtype, as core's dense_fraction is (float32 0.1 is not > 0.1)
    d = len(f)
    dense = torch.nonzero(f > DENSE).flatten()
    dense = dense[f[dense].argsort(descending=True)]
    resolvable = n_tokens >= math.ceil(1 / ULTRA_RARE)
    ultra = int(((f > 0) & (f < ULTRA_RARE)).sum()) if resolvable else None
    hist, _ = np.histogram(np.log10(f[f > 0].double().numpy()), bins=HIST_EDGES) if (f > 0).any() else (None, None)
    return {
        "latents": d,
        "tokens": int(n_tokens),
        "dead": int((f == 0).sum()),
        "dead_fraction": float((f == 0).sum()) / max(d, 1),
        "ultra_rare": ultra,
        "ultra_rare_fraction": None if ultra is None else ultra / max(d, 1),
        "dense": len(dense),
        "dense_fraction": len(dense) / max(d, 1),
        "densest": [[int(i), float(f[i])] for i in dense[:SHOW]],
        "log10_frequency_histogram": [0] * (len(HIST_EDGES) - 1) if hist is None else hist.tolist(),
    }


def norm_outliers(norms: torch.Tensor) -> dict:
    """Robust z-scores of decoder row norms [d_sae]: z = 0.6745 (x - median) / MAD, the MAD floored at
    NORM_FLOOR of the median (a unit-norm decoder has MAD 0); outliers have |z| > OUTLIER_Z."""
    x = norms.double().cpu()
    med = float(x.median())
    mad = float((x - med).abs().median())
    scale = max(mad, NORM_FLOOR * abs(med), 1e-12)
    z = 0.6745 * (x - med) / scale
    out = torch.nonzero(z.abs() > OUTLIER_Z).flatten()
    out = out[z[out].abs().argsort(descending=True)]
    return {
        "median": med,
        "mad": mad,
        "normalised": mad <= NORM_FLOOR * abs(med),
        "outliers": len(out),
        "largest": [[int(i), float(x[i]), float(z[i])] for i in out[:SHOW]],
    }


def absorption_by_band(entry: dict, freq: torch.Tensor) -> list[dict]:
    """absorption.py's per-letter results of one dictionary (its AbsorptionResult as a dict), grouped by the
    band of each letter's first main latent; letters with no correctly probed test word are left out."""
    groups: dict[str, list[dict]] = {}
    for r in entry.get("letters", []):
        if r["n_test"] and r["main_latents"]:
            groups.setdefault(band_of(float(freq[r["main_latents"][0]])), []).append(r)
    mean = lambda rs, k: float(np.mean([r[k] for r in rs]))  # noqa: E731
    return [
        {
            "band": band,
            "letters": "".join(r["letter"] for r in groups[band]),
            "absorption_rate": mean(groups[band], "absorption_rate"),
            "absorption_fraction": mean(groups[band], "absorption_fraction"),
            "split_features": mean(groups[band], "split_features"),
        }
        for band in band_order()
        if band in groups
    ]


def _firing(b: BenchState) -> list[tuple[torch.Tensor, int]]:
    """Per folder: (firing frequency [d_sae], tokens read), the core metric's when it ran, else the same pass."""
    if all(n in b.firing for n in b.names):
        return [b.firing[n] for n in b.names]
    saes = [(f.sae, f.provenance.sink) for f in b.folders]
    res, stats = reconstruction_metrics(
        b.lm.model, b.lm.tokenizer, saes, b.rows, EvalBudget(tokens=b.cfg.tokens, ce_tokens=0), b.cfg.device
    )
    return [(freq, m.eval_tokens) for freq, m in zip(stats.firing, res)]


def compute(b: BenchState) -> dict:
    firing = _firing(b)
    n_tokens = min(t for _, t in firing)
    absorbed = {d["dictionary"]: d for d in b.results.get("absorption", {}).get("dictionaries", [])}
    rows = []
    for f, n, (freq, tokens) in zip(b.folders, b.names, firing):
        rows.append(
            {
                "dictionary": n,
                **firing_diagnostics(freq, tokens),
                "decoder_norms": norm_outliers(f.sae.W_dec.detach().float().flatten(1).norm(dim=1)),  # [d_sae]
                "absorption_by_band": absorption_by_band(absorbed[n], freq) if n in absorbed else None,
            }
        )
    if n_tokens < math.ceil(1 / ULTRA_RARE):
        b.notes.append(
            f"diagnostics: ultra-rare latents (< {ULTRA_RARE:g}) need at least {math.ceil(1 / ULTRA_RARE):,} held-out "
            f"non-sink tokens (below that one firing is already >= {ULTRA_RARE:g}); {n_tokens:,} were read, so they "
            f"are n/a (--tokens counts positions before sinks are dropped: ask for ~5% more)"
        )
    return {
        "tokens": n_tokens,
        "thresholds": {"dense": DENSE, "ultra_rare": ULTRA_RARE, "outlier_z": OUTLIER_Z, "norm_floor": NORM_FLOOR},
        "dictionaries": rows,
        "meanings": dict(MEANINGS),
    }


def _count(n: int | None, frac: float | None) -> str:
    return "n/a" if n is None else f"{n} ({100 * frac:.1f}%)"


def tables(dg: dict) -> list[Table]:
    rows = []
    for r in dg["dictionaries"]:
        dn = r["decoder_norms"]
        rows.append(
            [
                r["dictionary"],
                r["latents"],
                _count(r["dead"], r["dead_fraction"]),
                _count(r["ultra_rare"], r["ultra_rare_fraction"]),
                _count(r["dense"], r["dense_fraction"]),
                ", ".join(f"{i}: {fmt(v)}" for i, v in r["densest"]) or "-",
                "normalised" if dn["normalised"] and not dn["outliers"] else dn["outliers"],
                f"{fmt(dn['median'])} / {fmt(dn['mad'])}",
            ]
        )
    out = [
        (
            f"Diagnostics (SAEs; at least {dg['tokens']:,} held-out non-sink tokens each: frequencies resolve "
            f"to {1 / max(dg['tokens'], 1):.1e})",
            [
                "dictionary",
                "latents",
                "dead",
                "ultra-rare (< 1e-5)",
                "dense (> 10%)",
                "densest (latent: frequency)",
                "decoder-norm outliers",
                "decoder norm median / MAD",
            ],
            rows,
        )
    ]
    bands = [
        [r["dictionary"], x["band"], x["letters"], x["absorption_rate"], x["absorption_fraction"], x["split_features"]]
        for r in dg["dictionaries"]
        for x in r["absorption_by_band"] or []
    ]
    if bands:
        out.append(
            (
                "Absorption by frequency band of each letter's main latent",
                ["dictionary", "band", "letters", "absorption rate", "absorption fraction", "split features"],
                bands,
            )
        )
    out.append(("What the diagnostics mean", ["diagnostic", "meaning"], [list(m) for m in dg["meanings"].items()]))
    return out


def panel(ax, dg: dict, l0s: dict) -> None:
    mids = [(a + b) / 2 for a, b in zip(HIST_EDGES, HIST_EDGES[1:])]
    for i, r in enumerate(dg["dictionaries"]):
        ax.step(mids, r["log10_frequency_histogram"], where="mid", color=f"C{i % 10}", label=r["dictionary"])
    ax.axvline(math.log10(DENSE), ls="--", lw=0.8, color="k")
    ax.axvline(math.log10(ULTRA_RARE), ls=":", lw=0.8, color="k")
    ax.set_xlabel("log10 firing frequency (dead not shown)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=6)
    ax.set_title("diagnostics: firing frequency")


METRIC = Metric(
    "diagnostics",
    "failure modes: dense, dead and ultra-rare latents, decoder-norm outliers, absorption by frequency band",
    compute,
    tables,
    panel,
    default=True,
    needs_model=True,
)
