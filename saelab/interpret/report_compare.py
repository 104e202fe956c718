"""The comparison of two interpretation runs in `saelab report A B` (report.py writes it): per scorer and
headline metric, the difference of mean scores A - B with a 95% bootstrap interval.

Two runs of the same dictionary (the same SAE or neuron set, e.g. two explainers) share latents: a
latent scored in both is one pair, and the difference is taken pair by pair (the latents' own spread,
which both runs share, drops out of the interval). The latents only one run scored, and every latent
of runs over different dictionaries (SAE latents vs neurons: latent 5 of one is not latent 5 of the
other), are compared unpaired, as two samples."""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP = 2000  # resamples per interval
_SAME = ("kind", "source", "hookpoint", "d_sae")  # what names a dictionary in a run's dictionary_info


def same_dictionary(a: dict, b: dict) -> bool:
    """Whether two runs' manifests explain the same dictionary, so that their latent ids name the same
    latents: the same recorded dictionary (kind, source folder, hookpoint, size), or, for runs that
    recorded no dictionary_info, the same dictionary name in the same latent cache."""
    ia, ib = a.get("dictionary_info"), b.get("dictionary_info")
    if ia and ib:
        return all(ia.get(k) == ib.get(k) for k in _SAME)
    return (
        a.get("dictionary") == b.get("dictionary") and a.get("cache") is not None and a.get("cache") == b.get("cache")
    )


def _finite(latents: list[int], values: list) -> dict[int, float]:
    return {j: float(v) for j, v in zip(latents, values) if v is not None and not math.isnan(v)}


def paired_diff(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """mean(a - b) over pairs and its 95% bootstrap interval (pairs resampled); nan below 2 pairs."""
    d = np.asarray(a, float) - np.asarray(b, float)  # [pairs]
    if len(d) < 2:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(d), (BOOTSTRAP, len(d)))  # [resamples, pairs]
    means = d[idx].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def unpaired_diff(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) of two samples and its 95% bootstrap interval; nan below 2 values on a side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    d = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(BOOTSTRAP)]
    return float(a.mean() - b.mean()), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def compare_metric(a: dict[int, float], b: dict[int, float], paired: bool) -> dict:
    """One metric of two runs ({latent: value}, finite values only): the paired part (shared latents,
    when `paired` and at least two) and the unpaired rest. `diff`, `lo`, `hi` are the paired part's when
    there is one, else the unpaired part's; `by` says which."""
    shared = sorted(set(a) & set(b)) if paired else []
    shared = shared if len(shared) >= 2 else []  # one pair has no interval: it joins the unpaired rest
    rest_a = [v for j, v in sorted(a.items()) if j not in shared]
    rest_b = [v for j, v in sorted(b.items()) if j not in shared]
    pd, plo, phi = paired_diff([a[j] for j in shared], [b[j] for j in shared])
    ud, ulo, uhi = unpaired_diff(rest_a, rest_b)
    main = (pd, plo, phi, "paired") if shared else (ud, ulo, uhi, "unpaired")
    return {
        "diff": main[0],
        "lo": main[1],
        "hi": main[2],
        "by": main[3],
        "paired": {"n": len(shared), "diff": pd, "lo": plo, "hi": phi},
        "unpaired": {"n_a": len(rest_a), "n_b": len(rest_b), "diff": ud, "lo": ulo, "hi": uhi},
    }


def compare_runs(a: dict, b: dict, ma: dict, mb: dict, metrics: dict[str, list[str]]) -> list[dict]:
    """The comparison rows of summaries `a` and `b` (report.summarise) of runs with manifests `ma`, `mb`:
    one per scorer both ran and headline metric of it (`metrics`: scorer -> metrics)."""
    paired = same_dictionary(ma, mb)
    rows = []
    for s in sorted(set(a["scorers"]) & set(b["scorers"])):
        sa, sb = a["scorers"][s], b["scorers"][s]
        for m in metrics.get(s, []):
            va = _finite(sa["latents"], sa["values"].get(m, []))
            vb = _finite(sb["latents"], sb["values"].get(m, []))
            row = {"scorer": s, "metric": m, "a": a["label"], "b": b["label"], "same_dictionary": paired}
            rows.append(row | compare_metric(va, vb, paired))
    return rows


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def _verdict(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "n/a (fewer than 2 latents)"
    return "yes" if lo > 0 else ("no (B higher)" if hi < 0 else "not significant")


def comparison_markdown(rows: list[dict]) -> list[str]:
    """The report's comparison section: a paired line for the latents both runs scored, an unpaired line
    for the rest (or for every latent of runs over different dictionaries)."""
    if not rows:
        return []
    L = ["", "## Comparison (A - B, 95% bootstrap interval; paired by latent where the runs share latents)", ""]
    L.append("| scorer | metric | A | B | latents | mean A - mean B | 95% interval | A higher? |")
    L.append("|---|---|---|---|---|---|---|---|")
    for c in rows:
        p, u = c["paired"], c["unpaired"]
        parts = []
        if p["n"]:
            parts.append((f"{p['n']} shared, paired", p))
        if u["n_a"] or u["n_b"] or not parts:
            what = "the rest" if c["same_dictionary"] else "different dictionaries"
            parts.append((f"{u['n_a']} vs {u['n_b']} ({what}), unpaired", u))
        for label, d in parts:
            L.append(
                f"| {c['scorer']} | {c['metric']} | {c['a']} | {c['b']} | {label} | {_fmt(d['diff'])} | "
                f"[{_fmt(d['lo'])}, {_fmt(d['hi'])}] | {_verdict(d['lo'], d['hi'])} |"
            )
    return L
