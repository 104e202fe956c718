"""Scorer validity: can a scorer tell a latent's own explanation from another latent's?

A scorer's numbers mean something only if the right explanation scores higher than a wrong one. For
each latent we score its own explanation and a shuffled one (the explanation of another latent of the
same run: a derangement, so no latent keeps its own), on the same examples. Over latents, the
right-vs-wrong AUC is the probability that a latent's own explanation outscores a shuffled one (1 =
always, 0.5 = chance), with a 95% bootstrap interval from resampling latents (a latent's right and
wrong score stay together). A scorer whose interval covers 0.5 is "at chance": its scores do not tell
right explanations from wrong ones on these latents, and the report says so beside them.

`saelab score --validity` writes the shuffled scores to RUN/validity_SCORER.jsonl (one ScoreResult
per latent plus `donor`, the latent whose explanation it got); `saelab report` reads them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .examples import Example, LatentExamples

# the metric compared per scorer: the first of these a result has (judges in generate mode have no AUC)
VALIDITY_METRICS = {
    "detection": ("auc", "balanced_accuracy"),
    "fuzzing": ("auc", "balanced_accuracy"),
    "embedding": ("auc",),
    "surprisal": ("auc",),
    "intervention": ("score",),
}
BOOTSTRAP = 2000  # resamples of latents per interval


def validity_path(run: Path, scorer: str) -> Path:
    return Path(run) / f"validity_{scorer}.jsonl"


def donors(latents: list[int], seed: int = 0) -> dict[int, int]:
    """latent -> the latent whose explanation it gets as its wrong one: a random cycle through all of
    them, so none gets its own and every explanation is used once (empty below two latents)."""
    order = [int(j) for j in np.random.default_rng(seed).permutation(sorted(latents))]
    if len(order) < 2:
        return {}
    return {j: order[(i + 1) % len(order)] for i, j in enumerate(order)}


def headline(scorer: str, metrics: dict) -> tuple[str | None, float]:
    """(metric name, value) compared for this scorer's result; (None, nan) if it has none of them."""
    for m in VALIDITY_METRICS.get(scorer, ()):
        if m in metrics and metrics[m] is not None:
            return m, float(metrics[m])
    return None, float("nan")


def right_vs_wrong(right: dict[int, float], wrong: dict[int, float], seed: int = 0) -> dict:
    """AUC of own-explanation scores (positives) against shuffled-explanation scores (negatives) over the
    latents with a finite value in both, its 95% bootstrap interval (latents resampled), and a verdict."""
    both = sorted(j for j in set(right) & set(wrong) if math.isfinite(right[j]) and math.isfinite(wrong[j]))
    r = np.array([right[j] for j in both])  # [n]
    w = np.array([wrong[j] for j in both])  # [n]
    out = {"n": len(both), "mean_right": float(r.mean()) if both else float("nan")}
    out["mean_wrong"] = float(w.mean()) if both else float("nan")
    out["win_rate"] = float(np.mean(r > w) + 0.5 * np.mean(r == w)) if both else float("nan")
    if len(both) < 2:
        return out | {"auc": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "verdict": "n/a"}
    # C[i, k]: 1 if latent i's own score beats latent k's wrong score, 0.5 on a tie; AUC = mean of C
    C = (r[:, None] > w[None, :]) + 0.5 * (r[:, None] == w[None, :])  # [n, n]
    n = len(both)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), BOOTSTRAP).astype(float)  # [B, n]
    boot = ((counts @ C) * counts).sum(1) / n**2  # [B]: AUC of each resample (a latent drawn twice counts twice)
    lo, hi = float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
    verdict = "tells right from wrong" if lo > 0.5 else ("below chance" if hi < 0.5 else "at chance")
    return out | {"auc": float(C.mean()), "ci_low": lo, "ci_high": hi, "verdict": verdict}


def run_validity(scores: dict[int, dict], shuffled: dict[int, dict], scorer: str) -> dict:
    """right_vs_wrong of one scorer of a run from its records ({latent: ScoreResult dict}, good ones used)."""
    right, wrong, names = {}, {}, set()
    for store, recs in ((right, scores), (wrong, shuffled)):
        for j, rec in recs.items():
            if rec.get("ok"):
                m, v = headline(scorer, rec.get("metrics", {}))
                if m is not None:
                    store[j] = v
                    names.add(m)
    return {"metric": "/".join(sorted(names)) or None} | right_vs_wrong(right, wrong)


def scorer_validity(scorer, examples: list[LatentExamples], explanations: dict[int, str], seed: int = 0) -> dict:
    """Score every latent's own explanation and a shuffled one with `scorer` (any object with `name` and
    `score(LatentExamples, explanation) -> ScoreResult`); -> run_validity's dict plus the values."""
    by = {ex.latent: ex for ex in examples}
    give = donors(list(by), seed)
    right = {j: scorer.score(by[j], explanations[j]).to_dict() for j in give}
    wrong = {j: scorer.score(by[j], explanations[d]).to_dict() for j, d in give.items()}
    return run_validity(right, wrong, scorer.name) | {"donors": give}


def planted_token_latents(
    tokenizer, text: str, n_latents: int = 8, window: int = 16, n_act: int = 10, n_neg: int = 10, seed: int = 0
) -> tuple[list[LatentExamples], dict[int, str]]:
    """Latents with a known meaning, to check a scorer on: latent j fires (activation 1) exactly on one
    word of `text` (a whole-word token, the most frequent ones that are in at most a third of the windows),
    scored on `n_act` windows holding it and `n_neg` random windows without it; its explanation is
    "the token 'word'". -> (examples, {latent: explanation})."""
    ids = np.array(tokenizer(text, add_special_tokens=False).input_ids)
    wins = ids[: len(ids) // window * window].reshape(-1, window)  # [windows, window]
    held = {}
    for t in np.unique(wins):
        piece = tokenizer.decode([int(t)])
        if piece.startswith(" ") and piece[1:].isalpha() and len(piece) >= 7:
            rows = np.where((wins == t).any(1))[0]
            if 2 * n_act <= len(rows) <= len(wins) // 3:
                held[int(t)] = (piece.strip(), rows)
    chosen = sorted(held, key=lambda t: (-len(held[t][1]), t))[:n_latents]
    if len(chosen) < n_latents:
        raise ValueError(f"the text has {len(chosen)} words frequent enough for {n_latents} planted latents")
    rng = np.random.default_rng(seed)
    out, expl = [], {}
    for j, t in enumerate(chosen):
        word, rows = held[t]
        neg = rng.permutation(np.setdiff1d(np.arange(len(wins)), rows))[:n_neg]

        def ex(r, kind, t=t):
            toks = wins[r].tolist()
            acts = [float(x == t) for x in toks]
            return Example(int(r), 0, toks, acts, acts.index(1.0) if kind == "activating" else -1, kind)

        out.append(LatentExamples(j, [], [ex(r, "activating") for r in rows[:n_act]], [ex(r, "random") for r in neg]))
        expl[j] = f"the token {word!r}"
    return out, expl
