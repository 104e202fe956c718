"""bench.png: one panel per metric, dictionaries side by side. Where several SAEs of different L0
are compared, a panel puts L0 on the x axis (SAEs as points joined in L0 order, baselines as
horizontal lines); otherwise dictionaries are bars."""

from __future__ import annotations

from pathlib import Path

from ...storage import write_figure


def _by_l0(ax, names, values, l0s, kinds, ylabel):
    sae = [
        (l0s[n], v, n)
        for n, v, k in zip(names, values, kinds)
        if k == "sae" and l0s.get(n) is not None and v is not None
    ]
    if len({round(x[0], 3) for x in sae}) >= 2:
        sae.sort()
        ax.plot([x[0] for x in sae], [x[1] for x in sae], "o-", label="SAEs")
        for x, y, n in sae:
            ax.annotate(n, (x, y), fontsize=6)
        for n, v, k in zip(names, values, kinds):
            if k != "sae" and v is not None:
                ax.axhline(v, ls="--", lw=0.8, label=n, color=f"C{1 + names.index(n) % 8}")
        ax.set_xlabel("L0")
        ax.set_xscale("log")
        ax.legend(fontsize=6)
    else:
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [values[i] for i in xs], color=[f"C{i % 10}" for i in xs])
        ax.set_xticks(xs, [names[i] for i in xs], rotation=30, ha="right", fontsize=6)
    ax.set_ylabel(ylabel)


def bench_plot(path: Path, results: dict[str, dict], dictionaries: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in ("core", "probing", "absorption", "autointerp", "synthetic") if m in results]
    if not panels:
        return None
    l0s = {d["name"]: d["l0"] for d in dictionaries}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, m in zip(axes[0], panels):
        r = results[m]
        if m == "core":
            ds = r["dictionaries"]
            _by_l0(ax, [d["dictionary"] for d in ds], [d["fvu"] for d in ds], l0s, ["sae"] * len(ds), "FVU")
            ax.set_title("core: FVU (held out)")
        elif m == "probing":
            for i, d in enumerate(r["dictionaries"]):
                ax.plot(
                    r["ks"],
                    [d["mean_accuracy"][str(k)] for k in r["ks"]],
                    "o-",
                    ms=3,
                    label=d["dictionary"],
                    color=f"C{i % 10}",
                )
            ax.set_xscale("log")
            ax.set_xlabel("k latents")
            ax.set_ylabel("mean held-out accuracy")
            ax.set_title("sparse probing")
            ax.legend(fontsize=6)
        elif m == "absorption":
            ds = [d for d in r["dictionaries"] if d["applicable"]]
            _by_l0(
                ax,
                [d["dictionary"] for d in ds],
                [d["mean_absorption_rate"] for d in ds],
                l0s,
                [d["kind"] for d in ds],
                "absorption rate",
            )
            ax.set_title(f"absorption (probe acc {r['probe_accuracy']:.2f})")
        elif m == "autointerp":
            items = [(f"{s}:{k}", v["mean"]) for s, sc in r["scorers"].items() for k, v in sc["primary"].items()]
            ax.bar(range(len(items)), [v for _, v in items])
            ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=30, ha="right", fontsize=6)
            ax.set_title(f"autointerp: {r['label']}")
        else:
            ds = [d for d in r["dictionaries"] if d.get("report")]
            _by_l0(
                ax,
                [d["dictionary"] for d in ds],
                [d["report"]["recovered"] for d in ds],
                l0s,
                ["sae"] * len(ds),
                "recovered (cos >= 0.9)",
            )
            ax.set_title("synthetic ground truth")
    fig.tight_layout()
    write_figure(path, fig)
    return path.name
