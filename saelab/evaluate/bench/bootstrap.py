"""The noise of a bench number: a percentile bootstrap over its test examples, shared by every metric.

A metric hands in its per-example values (a probe's 0/1 correctness on each held-out example, ...)
as strata: groups of examples resampled separately (a task's one-vs-rest sub-tasks, the tasks of a
mean over tasks), each an [n_s, m] array with one column per series (dictionary x k, ...), and the
statistic is the weighted mean of the strata means. Every series is resampled with the SAME example
draws, so the difference of two columns is a paired bootstrap of their difference: dictionaries
scored on the same examples are compared on the same resamples, which removes the examples'
shared difficulty from the comparison.

What the interval covers: only the choice of test examples. The probe's fit, the task's split and
the dictionary's training seed are held fixed; their noise is not in it (`--seeds`, seed stability).

`noise_block` turns the resamples into the JSON form every metric reports (value, ci_low, ci_high,
n per series, the minimum detectable difference per quantity, and paired comparisons marked
`within_noise` when the difference's interval covers 0); `noise_tables` renders it in report.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from statistics import NormalDist

import numpy as np

from .metric import Table, fmt

LEVEL = 0.9  # two-sided interval level
RESAMPLES = 1000
POWER = 0.8  # the power at which the minimum detectable difference is stated
MIN_STRATUM = 5  # below this many examples in a stratum its resamples barely vary: intervals are too narrow


@dataclass
class Interval:
    value: float  # the statistic on the examples as drawn
    ci_low: float
    ci_high: float
    n: int  # test examples behind it


def bootstrap_means(
    strata: list[np.ndarray], weights=None, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """(point [m], resampled statistics [resamples, m], examples n) of sum_s w_s * mean(strata[s]),
    each stratum resampled with replacement within itself (fixed seed). Strata are [n_s, m] (or [n_s]:
    one series); empty strata are left out and the weights of the others renormalised."""
    strata = [np.asarray(s, dtype=np.float64).reshape(len(s), -1) for s in strata]
    w = np.ones(len(strata)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = [i for i, s in enumerate(strata) if len(s)]
    if not keep:
        raise ValueError("bootstrap_means: no examples")
    w = w[keep] / w[keep].sum()
    m = strata[keep[0]].shape[1]
    rng = np.random.default_rng(seed)
    point, boot = np.zeros(m), np.zeros((resamples, m))
    for wi, i in zip(w, keep):
        v = strata[i]
        n = len(v)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [B, n]: draws of each example
        boot += wi * (counts @ v) / n
        point += wi * v.mean(0)
    return point, boot, sum(len(strata[i]) for i in keep)


def bootstrap_ratios(
    num: np.ndarray, den: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """(point [m], resampled [resamples, m], units n) of sum(num) / sum(den) per column, the units (rows of
    num, den: [n, m]) resampled with replacement: a ratio of sums (FVU = squared error / variance, a mean
    over tokens resampled by row) is not a mean of per-unit values."""
    num = np.asarray(num, dtype=np.float64).reshape(len(num), -1)
    den = np.asarray(den, dtype=np.float64).reshape(len(den), -1)
    n = len(num)
    if not n:
        raise ValueError("bootstrap_ratios: no units")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [B, n]
    safe = lambda a, b: a / np.where(b == 0, np.nan, b)  # noqa: E731
    return safe(num.sum(0), den.sum(0)), safe(counts @ num, counts @ den), n


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of resampled statistics [B, ...] along the first axis."""
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a], axis=0)
    return lo, hi


def min_detectable_difference(boot: np.ndarray, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest true difference between two dictionaries with this noise (the series' mean
    bootstrap standard error se, each measured on as many examples) that a two-sided test at `level`
    finds with probability `power`: (z_level + z_power) * sqrt(2) * se. Paired comparisons on the same
    examples can resolve less (the comparison table says which ones are within noise)."""
    se = float(np.mean(boot.reshape(len(boot), -1).std(0, ddof=1)))
    z = NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(power)
    return z * np.sqrt(2) * se


def paired_difference(boot: np.ndarray, point: np.ndarray, a: int, b: int, level: float = LEVEL) -> dict:
    """Series a minus series b, its interval from the shared resamples, and whether it is within noise
    (the interval covers 0)."""
    lo, hi = percentile_interval(boot[:, a] - boot[:, b], level)
    return {
        "difference": float(point[a] - point[b]),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "within_noise": bool(lo <= 0 <= hi),
    }


def noise_block(
    point: np.ndarray,
    boot: np.ndarray,
    n: int,
    series: list[tuple[str, str]],
    compare: list[str] | None = None,
    level: float = LEVEL,
    seed: int = 0,
    smallest: int | None = None,
    unit: str = "test examples",
) -> dict:
    """The JSON a metric reports for its noise. `series[j]` = (quantity, dictionary) of column j;
    dictionaries are compared pairwise on each quantity in `compare` (default: the first). `smallest`:
    the fewest examples in a stratum; under MIN_STRATUM the block is marked unreliable (a stratum of one
    example never varies, so the intervals would look exact)."""
    lo, hi = percentile_interval(boot, level)
    quantities = list(dict.fromkeys(q for q, _ in series))
    col = {s: j for j, s in enumerate(series)}
    out: dict = {
        "level": level,
        "resamples": len(boot),
        "seed": seed,
        "unit": unit,
        "reliable": smallest is None or smallest >= MIN_STRATUM,
        "smallest_stratum": smallest,
        "intervals": {q: {} for q in quantities},
        "min_detectable_difference": {},
        "comparisons": {},
    }
    for j, (q, d) in enumerate(series):
        out["intervals"][q][d] = asdict(Interval(float(point[j]), float(lo[j]), float(hi[j]), n))
    for q in quantities:
        cols = [j for j, (qq, _) in enumerate(series) if qq == q]
        out["min_detectable_difference"][q] = min_detectable_difference(boot[:, cols], level)
    for q in compare if compare is not None else quantities[:1]:
        names = [d for qq, d in series if qq == q]
        out["comparisons"][q] = [
            {"a": a, "b": b, **paired_difference(boot, point, col[(q, a)], col[(q, b)], level)}
            for a, b in combinations(names, 2)
        ]
    return out


def series_noise(
    values: dict[tuple[str, str], list[np.ndarray]],
    weights=None,
    compare: list[str] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    unit: str = "test examples",
) -> dict | None:
    """A metric's noise block from its per-example values: `values[(quantity, dictionary)]` = one array
    per stratum, every series holding the same examples in the same order (so comparisons are paired);
    None when there is no example."""
    series = list(values)
    if not series or not any(len(v) for v in values[series[0]]):
        return None
    strata = [np.stack([values[s][i] for s in series], 1) for i in range(len(values[series[0]]))]  # [n_s, m]
    point, boot, n = bootstrap_means(strata, weights, resamples, seed)
    smallest = min(len(s) for s in strata if len(s))
    return noise_block(point, boot, n, series, compare, seed=seed, smallest=smallest, unit=unit)


def _cell(iv: dict) -> str:
    return f"{fmt(iv['value'])} [{fmt(iv['ci_low'])}, {fmt(iv['ci_high'])}]"


def _verdict(p: dict, reliable: bool) -> str:
    if not reliable:
        return "too few examples"
    return "within noise" if p["within_noise"] else ("a higher" if p["difference"] > 0 else "a lower")


def noise_tables(what: str, noise: dict) -> list[Table]:
    """report.md sections of a noise block: each dictionary's intervals per quantity with the minimum
    detectable difference under them, and the paired comparisons (which differences are within noise)."""
    pct = f"{round(100 * noise['level'])}%"
    qs = list(noise["intervals"])
    names = list(dict.fromkeys(d for q in qs for d in noise["intervals"][q]))
    n = next(iter(noise["intervals"][qs[0]].values()))["n"] if qs else 0
    rows = [[d] + [_cell(noise["intervals"][q][d]) if d in noise["intervals"][q] else None for q in qs] for d in names]
    rows.append(["min detectable difference"] + [noise["min_detectable_difference"][q] for q in qs])
    reliable = noise.get("reliable", True)
    warn = (
        ""
        if reliable
        else f" -- UNRELIABLE: a stratum has only {noise['smallest_stratum']} examples, the intervals are too narrow"
    )
    out = [
        (
            f"{what}: {pct} bootstrap intervals over the {n} {noise.get('unit', 'test examples')} ({noise['resamples']} resamples; "
            f"the minimum detectable difference is at {round(100 * POWER)}% power){warn}",
            ["dictionary"] + qs,
            rows,
        )
    ]
    for q, pairs in noise["comparisons"].items():
        if pairs:
            out.append(
                (
                    f"{what}, {q}: paired differences ({pct} interval; within noise = the interval covers 0)",
                    ["a", "b", "a - b", "interval", "verdict"],
                    [
                        [
                            p["a"],
                            p["b"],
                            p["difference"],
                            f"[{fmt(p['ci_low'])}, {fmt(p['ci_high'])}]",
                            _verdict(p, reliable),
                        ]
                        for p in pairs
                    ],
                )
            )
    return out
