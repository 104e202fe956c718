"""Seed groups: the bench's SAE folders whose training configuration is identical except the seed
(train/seed_identity.py decides, from cfg.json and the run's manifest.json, never from folder names: runs of
`saelab train --seeds N` and separate `saelab train --seed S` runs group alike). Per group and per metric
value the other metrics reported (every noise block's quantities: core FVU, cosine, CE recovered, KL, CE
increase; probing mean accuracy at each k, in and out of distribution; absorption; plus L0), the
across-seed mean, sd and t-interval, and between every two groups the Welch rule of seed_stats.py: a
difference is "within noise" when the seeds' spread explains it.

This is the other half of the noise: the bootstrap intervals of each metric (bootstrap.py) hold the
dictionary fixed and resample the test examples; these hold the examples fixed and vary the training seed.
It runs last (registry order) and reads the results computed before it; it measures nothing itself."""

from __future__ import annotations

from itertools import combinations

from ...train.seed_identity import seed_of, training_identity
from .bootstrap import LEVEL
from .metric import BenchState, Metric, Table, fmt
from .seed_stats import seed_summary, welch

NAME = "seed_groups"
RULE = (
    "within noise: |mean_A - mean_B| <= t_{(1+level)/2, Welch df} * sqrt(sd_A^2/n_A + sd_B^2/n_B) "
    "(the Welch interval of the difference covers 0); groups of one seed are not compared"
)


def find_groups(b: BenchState) -> tuple[list[dict], list[str]]:
    """Groups of two or more SAE folders with one training identity and distinct seeds, in bench order;
    notes on folders left out (no identity, a repeated seed)."""
    by_identity: dict[str, list] = {}
    notes = []
    for f, n in zip(b.folders, b.names):
        ident, from_run = training_identity(f.path, f.cfg)
        seed = seed_of(f.cfg)
        if ident is None or seed is None:
            continue
        by_identity.setdefault(ident, []).append((n, seed, f, from_run))
    groups = []
    for members in by_identity.values():
        seen, kept = set(), []
        for n, seed, f, from_run in members:
            if seed in seen:
                notes.append(f"{NAME}: {n} repeats seed {seed} of its configuration: counted once")
                continue
            seen.add(seed)
            kept.append((n, seed, f, from_run))
        if len(kept) < 2:
            continue
        c = kept[0][2].sae.cfg
        ours = kept[0][2].cfg.get("saelab", {})
        what = f"{c.arch} d_sae={c.d_sae} " + (f"k={c.k}" if c.k is not None else f"coeff={c.sparsity_coeff}")
        groups.append(
            {
                "group": f"{kept[0][0]} [{len(kept)} seeds]",
                "configuration": f"{what} lr={fmt(ours.get('lr'))} tokens={ours.get('training_tokens')}",
                "run_manifest": all(m[3] for m in kept),  # False: grouped on cfg.json alone
                "members": [{"dictionary": n, "seed": s, "folder": str(f.path)} for n, s, f, _ in kept],
            }
        )
    return groups, notes


def harvest(results: dict[str, dict], l0: dict) -> dict[str, dict[str, float]]:
    """{metric value: {dictionary: value}} from every noise block of the results (the values they
    interval), plus L0. A quantity that two blocks of one metric share is named with its block's prefix
    (probing "k=1" and "ood k=1")."""
    blocks = [
        (m, key, blk)
        for m, r in results.items()
        if m != NAME
        for key, blk in r.items()
        if key.endswith("noise") and isinstance(blk, dict) and "intervals" in blk
    ]
    out: dict[str, dict[str, float]] = {"l0": {n: v for n, v in l0.items() if v is not None}}
    for metric, key, blk in blocks:
        prefix = key[: -len("noise")].rstrip("_")
        for q, per in blk["intervals"].items():
            clash = sum(q in other["intervals"] for mm, _, other in blocks if mm == metric) > 1
            name = " ".join(x for x in (metric, prefix if clash else "", q) if x)
            out[name] = {d: iv["value"] for d, iv in per.items()}
    return out


def compute(b: BenchState) -> dict:
    groups, notes = find_groups(b)
    b.notes += notes
    res: dict = {"level": LEVEL, "rule": RULE, "groups": groups, "values": {}, "comparisons": {}}
    if not groups:
        if len(b.folders) > 1:
            b.notes.append(f"{NAME}: no two SAE folders share a training configuration but the seed")
        return res
    for q, per in harvest(b.results, b.l0).items():
        stats = {}
        for g in groups:
            vals = [per.get(m["dictionary"]) for m in g["members"]]
            if any(v is not None for v in vals):
                stats[g["group"]] = seed_summary(vals) | {"values": vals}
        if not stats:
            continue
        res["values"][q] = stats
        pairs = [(a, c, welch(stats[a], stats[c])) for a, c in combinations(stats, 2)]
        res["comparisons"][q] = [{"a": a, "b": c, **w} for a, c, w in pairs if w is not None]
    return res


def tables(js: dict) -> list[Table]:
    if not js["groups"]:
        return []
    pct = f"{round(100 * js['level'])}%"
    out = [
        (
            "Seed groups (SAE folders trained with the same configuration but the seed)",
            ["group", "configuration", "seeds", "members", "grouped on"],
            [
                [
                    g["group"],
                    g["configuration"],
                    ", ".join(str(m["seed"]) for m in g["members"]),
                    ", ".join(m["dictionary"] for m in g["members"]),
                    "run manifest + cfg.json" if g["run_manifest"] else "cfg.json only",
                ]
                for g in js["groups"]
            ],
        ),
        (
            f"Seed groups: across-seed mean, sd and {pct} t-interval of each metric value",
            ["metric", "group", "seeds", "mean", "sd", "interval"],
            [
                [q, g, s["n"], s["mean"], s["sd"], f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"]
                for q, per in js["values"].items()
                for g, s in per.items()
            ],
        ),
    ]
    rows = [
        [q, p["a"], p["b"], p["difference"], f"[{fmt(p['ci_low'])}, {fmt(p['ci_high'])}]", _verdict(p)]
        for q, pairs in js["comparisons"].items()
        for p in pairs
    ]
    if rows:
        out.append(
            (
                f"Seed groups: between-group differences ({pct} Welch interval; {js['rule']})",
                ["metric", "a", "b", "a - b", "interval", "verdict"],
                rows,
            )
        )
    return out


def _verdict(p: dict) -> str:
    return "within noise" if p["within_noise"] else ("a higher" if p["difference"] > 0 else "a lower")


METRIC = Metric(
    NAME,
    "groups SAE folders trained alike but for the seed: across-seed mean, sd, t-interval, Welch comparisons",
    compute,
    tables,
    default=True,
)
