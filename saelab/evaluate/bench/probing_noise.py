"""The noise of sparse probing's mean accuracy: a bootstrap (bootstrap.py) over the held-out examples.

The mean accuracy at k is the mean over tasks of the mean over a task's one-vs-rest sub-tasks of
held-out accuracy, so each sub-task's test examples are one stratum, weighted 1 / (tasks x the
task's sub-tasks): the bootstrap's point value is exactly `mean_accuracy[k]`. Every dictionary is
probed on the same test examples of a sub-task, so the comparisons are paired."""

from __future__ import annotations

from .bootstrap import RESAMPLES, series_noise

COMPARE_KS = (1, 5)  # the ks whose dictionaries are compared pairwise in the report


def probing_noise(correct: list[dict], names: list[str], ks, seed: int = 0, resamples: int = RESAMPLES) -> dict | None:
    """`correct[task][dictionary]` = per sub-task {k: 0/1 correctness on its held-out examples} (probing.py
    `probe_task`); quantities are "k=<k>", one series per dictionary."""
    tasks = [t for t in correct if t]
    values = {(f"k={k}", n): [s[str(k)] for t in tasks for s in t[n]] for k in ks for n in names}
    weights = [1.0 / len(t[names[0]]) for t in tasks for _ in t[names[0]]]  # each task weighs 1
    compare = [f"k={k}" for k in COMPARE_KS if k in ks] or [f"k={ks[0]}"]
    return series_noise(values, weights, compare, resamples, seed, "held-out examples")
