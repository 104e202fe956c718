"""The noise of sparse probing's mean accuracy: a bootstrap (bootstrap.py) over the held-out examples.

The mean accuracy at k is the mean over tasks of the mean over a task's one-vs-rest sub-tasks of
held-out accuracy, so each sub-task's test examples are one stratum, weighted 1 / (tasks x the
task's sub-tasks): the bootstrap's point value is exactly `mean_accuracy[k]`. Every dictionary is
probed on the same test examples of a sub-task, so the comparisons are paired."""

from __future__ import annotations

import numpy as np

from .bootstrap import RESAMPLES, bootstrap_means, noise_block

COMPARE_KS = (1, 5)  # the ks whose dictionaries are compared pairwise in the report


def probing_noise(correct: list[dict], names: list[str], ks, seed: int = 0, resamples: int = RESAMPLES) -> dict | None:
    """`correct[task][dictionary]` = per sub-task {k: 0/1 correctness on its held-out examples} (probing.py
    `probe_task`); quantities are "k=<k>", one series per dictionary."""
    series = [(f"k={k}", n) for k in ks for n in names]
    strata, weights = [], []
    for task in correct:
        if not task:
            continue
        subs = len(task[names[0]])
        for s in range(subs):
            strata.append(np.stack([task[n][s][q.removeprefix("k=")] for q, n in series], 1))  # [n_test, m]
            weights.append(1.0 / subs)
    if not strata:
        return None
    point, boot, n = bootstrap_means(strata, weights, resamples, seed)  # each task weighs 1
    compare = [f"k={k}" for k in COMPARE_KS if k in ks] or [f"k={ks[0]}"]
    return noise_block(point, boot, n, series, compare, seed=seed)
