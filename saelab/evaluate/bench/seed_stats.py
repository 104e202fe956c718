"""The noise of training seeds: statistics over a few values of one metric, one per seed of the same
configuration (a seed group, seed_groups.py), and the rule that says whether two groups differ.

Per group: the across-seed mean, the sample standard deviation (ddof 1) and the Student-t interval of the
mean at LEVEL (bootstrap.py's level): mean +- t_{(1+LEVEL)/2, n-1} * sd / sqrt(n), which covers the mean
that an endless number of seeds would give at the nominal rate when the seeds' values are about normal.

Between two groups A and B (Welch): the difference of means is WITHIN NOISE when its Welch interval
covers 0, i.e. |mean_A - mean_B| <= t_{(1+LEVEL)/2, df} * sqrt(sd_A^2 / n_A + sd_B^2 / n_B) with the
Welch-Satterthwaite df; otherwise the seeds' spread does not explain it. Groups with one seed have no
spread and are never compared. Two groups whose values do not vary at all (sd 0: L0 of TopK) differ
exactly when their means differ.

scipy is not a dependency: the t quantile is computed here (regularised incomplete beta + bisection)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .bootstrap import LEVEL


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf; exact to ~1e-10)."""
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


def seed_summary(values, level: float = LEVEL) -> dict:
    """n, mean, sd and the t-interval of the mean of one group's per-seed values (non-finite ones left out)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = len(v)
    if not n:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = float(v.std(ddof=1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def welch(a: dict, b: dict, level: float = LEVEL) -> dict | None:
    """Group a minus group b (seed_summary dicts): the difference of means, its Welch interval, df, and
    whether it is within noise (the interval covers 0). None when either group has fewer than two seeds."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    diff = a["mean"] - b["mean"]
    va, vb = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": diff, "ci_low": diff, "ci_high": diff, "df": None, "within_noise": diff == 0}
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    half = t_quantile((1 + level) / 2, df) * se
    return {
        "difference": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "df": df,
        "within_noise": bool(abs(diff) <= half),
    }
