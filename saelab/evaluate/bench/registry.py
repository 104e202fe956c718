"""The bench's metrics: one list, in the order they run, appear in report.md / report.html and get
their panel in bench.png. run.py, config.py (--metrics choices and defaults), report.py and plots.py
read it; nothing else names a metric. Adding a metric: its module (declaring `METRIC = Metric(...)`,
see metric.py) and one line here."""

from __future__ import annotations

from . import absorption, autointerp, core, diagnostics, probing, seed_groups, seeds, steering, synthetic
from .metric import Metric

METRICS: list[Metric] = [
    core.METRIC,
    probing.METRIC,
    absorption.METRIC,
    diagnostics.METRIC,
    autointerp.METRIC,
    synthetic.METRIC,
    seeds.METRIC,
    steering.METRIC,
    seed_groups.METRIC,  # last: it reads the values the others computed
]


def all_metrics() -> list[Metric]:
    """The registered metrics, in order (read at call time: a test may register its own)."""
    return list(METRICS)


def names() -> list[str]:
    return [m.name for m in METRICS]


def metric(name: str) -> Metric:
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(name)
