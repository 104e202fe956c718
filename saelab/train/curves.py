"""train_curves.png: the training curves of a run, drawn from its train_log.jsonl.

One panel per logged statistic (local: fvu, l0, dead, aux; e2e: also kl, ds_mse, loss), tokens
on the x axis, one line per SAE of the run. Written at the end of every training run, so a
researcher sees at a glance whether the run converged or is still improving."""

from __future__ import annotations

from pathlib import Path

from ..storage import read_jsonl, write_figure

LOG = "train_log.jsonl"
FIGURE = "train_curves.png"
LOG_SCALE = {"kl", "ds_mse", "loss", "fvu", "aux"}  # losses span decades early in training


def plot_train_log(run: Path) -> Path | None:
    """Draw RUN/train_curves.png; None when the run has no log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    records = read_jsonl(run / LOG)
    if not records:
        return None
    from matplotlib.ticker import EngFormatter, MaxNLocator

    names = list(records[-1]["saes"])
    keys = [k for k in records[-1]["saes"][names[0]] if k != "dead"] + ["dead"]
    values = {k: {r["saes"][n][k] for r in records for n in names if k in r["saes"].get(n, {})} for k in keys}
    constant = {k: next(iter(v)) for k, v in values.items() if len(v) == 1 and k != "dead"}  # TopK's l0 = k
    keys = [k for k in keys if k not in constant]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    if constant:
        fig.suptitle("constant, not drawn: " + ", ".join(f"{k} = {v:g}" for k, v in constant.items()), fontsize=8)
    for ax, key in zip(axes[0], keys):
        ax.xaxis.set_major_locator(MaxNLocator(4))  # few ticks, short labels (150k, 1.2M): never run together
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        for name in names:
            pts = [(r["tokens"], r["saes"][name][key]) for r in records if key in r["saes"].get(name, {})]
            if pts:
                ax.plot(*zip(*pts), label=name, lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("training tokens")
        if key in LOG_SCALE and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = run / FIGURE
    write_figure(path, fig)
    return path
