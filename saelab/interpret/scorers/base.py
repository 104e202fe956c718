"""The typed result every scorer returns, and the classification metrics they share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# the headline metrics of each scorer (report.py shows these first)
PRIMARY = {
    "detection": ["balanced_accuracy", "auc"],
    "fuzzing": ["balanced_accuracy", "auc"],
    "embedding": ["auc"],
    "surprisal": ["auc"],
    "intervention": ["score"],
}

DESCRIPTIONS = {
    "balanced_accuracy": "mean of recall on activating and on non-activating examples (0.5 = chance)",
    "auc": "probability that a random activating example scores above a random non-activating one (0.5 = chance)",
    "f1": "harmonic mean of precision and recall on activating examples",
    "precision": "fraction of examples judged activating that are activating",
    "recall": "fraction of activating examples judged activating",
    "score": "increase in log-probability per token of the explanation when steering along the latent, "
    "minus the same for control phrases (nats)",
}


@dataclass
class ScoreResult:
    scorer: str
    latent: int
    ok: bool
    metrics: dict = field(default_factory=dict)  # metric name -> float
    error: str | None = None
    seconds: float = 0.0
    mode: str = ""  # logprob | generate | embedding | lm
    n_activating: int = 0
    n_negative: int = 0
    n_failed_examples: int = 0  # examples the judge gave no usable answer for
    predictions: list = field(default_factory=list)  # [example id, label 0/1, score] per example
    usage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def failure(cls, scorer: str, latent: int, error: str, seconds: float = 0.0, **kw) -> ScoreResult:
        return cls(scorer, latent, False, {}, error, seconds, **kw)


def auc(labels, scores) -> float:
    """Area under the ROC curve via ranks (ties count half); nan if one class is missing."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def classification_metrics(labels, preds, probs=None) -> dict:
    """labels, preds: 0/1 per example; probs: P(activating) per example (optional, for AUC)."""
    y = np.asarray(labels, bool)
    p = np.asarray(preds, bool)
    tp, fp = int((y & p).sum()), int((~y & p).sum())
    fn, tn = int((y & ~p).sum()), int((~y & ~p).sum())
    recall = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else 0.0
    out = {
        "balanced_accuracy": (recall + spec) / 2,
        "accuracy": (tp + tn) / max(1, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_negative_rate": spec,
    }
    if probs is not None:
        out["auc"] = auc(y, probs)
    return out
