"""Issue 28: PLT set vs CLT on one plot: total L0 (summed over layers) against the all-spliced KL and the
mean per-layer FVU of the MLP outputs, from the `replacement_metrics.json` that `saelab eval` wrote for each
replacement folder.

    python bench/replacement_pareto.py RUN_A/replacement_metrics.json RUN_B/... --out docs/img/replacement_pareto.png

Prints one row per folder (Markdown) and writes the figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saelab.storage import read_json, write_figure

COLORS = {"plt": "#3b6ea8", "clt": "#a8573b"}


def summary(path: Path) -> dict:
    rec = read_json(path)
    m = rec["metrics"]
    layers = m["layers"]
    return {
        "name": Path(rec["replacement"]).name,
        "kind": rec["kind"],
        "total_l0": sum(r["l0"] for r in layers),
        "mean_fvu": sum(r["fvu"] for r in layers) / len(layers),
        "kl": m.get("kl"),
        "ce_increase": m.get("ce_increase"),
        "top1": m.get("top1_agreement"),
        "replacement_score": m.get("replacement_score"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics", nargs="+", type=Path, help="replacement_metrics.json files")
    ap.add_argument("--out", type=Path, default=Path("replacement_pareto.png"))
    a = ap.parse_args()
    rows = [summary(p) for p in a.metrics]
    print("| folder | kind | total L0 | mean FVU | KL | CE increase | top-1 agreement | replacement score |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['kind'].upper()} | {r['total_l0']:.0f} | {r['mean_fvu']:.3f} | {r['kl']:.3f} | "
            f"{r['ce_increase']:+.3f} | {r['top1']:.3f} | {r['replacement_score']:.3f} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "kl", "KL, every MLP replaced (nats/token)"), (axes[1], "mean_fvu", "mean FVU")):
        for kind in ("plt", "clt"):
            pts = sorted((r["total_l0"], r[key], r["name"]) for r in rows if r["kind"] == kind)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[kind], label=kind.upper())
        ax.set_xlabel("total L0 (active latents per token, all layers)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Replacement models of SmolLM2-135M: per-layer transcoders vs a cross-layer transcoder", fontsize=9)
    fig.tight_layout()
    write_figure(a.out, fig)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
