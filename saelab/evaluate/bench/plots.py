"""bench.png: one panel per metric (its `panel`, registry.py; in registry order), dictionaries side
by side. Where several SAEs of different L0 are compared, a panel puts L0 on the x axis (SAEs as
points joined in L0 order, baselines as horizontal lines: metric.by_l0); otherwise dictionaries are
bars."""

from __future__ import annotations

from pathlib import Path

from ...storage import write_figure
from . import registry


def bench_plot(path: Path, results: dict[str, dict], dictionaries: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in registry.all_metrics() if m.name in results and m.panel is not None]
    if not panels:
        return None
    l0s = {d["name"]: d["l0"] for d in dictionaries}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, m in zip(axes[0], panels):
        m.panel(ax, results[m.name], l0s)
    fig.tight_layout()
    write_figure(path, fig)
    return path.name
