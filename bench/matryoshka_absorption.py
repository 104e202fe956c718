"""Matryoshka vs BatchTopK vs TopK on planted parent/child features: does Matryoshka absorb less?

On the embedded model absorption is ~0 for every type (docs/research/dictionaries.md), so the paper's claim
(Bussmann et al. 2025: less absorption at the same L0) cannot be tested there. Here the hierarchy is
planted (`saelab synthetic --hierarchy PxC`: a child fires only with its parent) and the recovery
report measures absorption against the truth (`saelab/evaluate/synthetic_recovery.py`). Every type
trains on the same cache with the same k, latents, tokens and seeds; the table gives the mean and the
range over seeds.

    python bench/matryoshka_absorption.py --out .cache/bench/matryoshka_absorption [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import saelab.train.loop as loop
from saelab.evaluate.synthetic_data import HOOK, SyntheticConfig, write_synthetic
from saelab.evaluate.synthetic_recovery import recovery_report
from saelab.sae.folder import open_sae
from saelab.storage import read_json, write_json
from saelab.train.config import TrainConfig

COLUMNS = [
    ("l0", "L0"),
    ("fvu", "FVU"),
    ("recovered", "recovered"),
    ("abs:rate", "absorption rate"),
    ("abs:pairs_absorbed", "pairs absorbed"),
    ("abs:parent_miss", "parent miss"),
    ("abs:parent_recall_alone", "parent recall alone"),
]


def value(report: dict, key: str) -> float:
    return float(report["absorption"][key[4:]] if key.startswith("abs:") else report[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--archs", nargs="+", default=["topk", "batchtopk", "matryoshka"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--k-true", type=float, default=4)
    ap.add_argument("--hierarchy", default="4x2")
    ap.add_argument("--child-prob", type=float, default=0.3)
    ap.add_argument("--latents", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--groups", nargs="+", type=int, default=None, help="matryoshka's group sizes (default: its own)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    out = Path(a.out)
    cache = out / "cache"
    syn = SyntheticConfig(
        out=str(cache),
        features=a.features,
        dim=a.dim,
        k_true=a.k_true,
        tokens=a.tokens,
        hierarchy=a.hierarchy,
        child_prob=a.child_prob,
        context=64,
    )
    if not (cache / "manifest.json").exists():
        write_synthetic(syn)
    elif {k: v for k, v in read_json(cache / "manifest.json")["synthetic"]["config"].items() if k != "out"} != {
        k: v for k, v in vars(syn).items() if k != "out"
    }:  # a rerun reuses the cache only for the same data
        raise SystemExit(f"{cache} holds another synthetic setting; use another --out")
    rows: dict[str, list[dict]] = {}
    for arch in a.archs:
        for seed in a.seeds:
            cfg = TrainConfig(
                out=str(out / f"{arch}_s{seed}"),
                from_activations=str(cache),
                model="synthetic",
                hookpoints=[HOOK],
                context=64,
                arch=arch,
                latents=a.latents,
                k=[a.k],
                tokens=a.tokens,
                batch_tokens=a.batch_tokens,
                threads=a.threads,
                seed=seed,
                overwrite=True,
                groups=a.groups if arch == "matryoshka" else None,
            )
            report = recovery_report(open_sae(loop.train(cfg)[0]))
            rows.setdefault(arch, []).append(report)
            print(arch, seed, {name: round(value(report, key), 3) for key, name in COLUMNS}, flush=True)
    write_json(out / "result.json", {"args": vars(a), "reports": rows})
    print(
        f"\n{a.features} features in {a.dim} dims, hierarchy {a.hierarchy} (child prob {a.child_prob}), "
        f"{a.latents} latents, k = {a.k}, matryoshka groups {a.groups or 'default'}, {a.tokens:,} vectors, seeds {a.seeds}: mean (min-max)\n"
    )
    print("| type | " + " | ".join(name for _, name in COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for arch, reports in rows.items():
        cells = []
        for key, _ in COLUMNS:
            v = torch.tensor([value(r, key) for r in reports])
            cells.append(f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})")
        print(f"| {arch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
