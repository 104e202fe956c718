"""Plots of an evaluation: latent firing density (and the L0 histogram) beside metrics.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..storage import write_figure


def density_plot(freq: torch.Tensor, path: Path, title: str, l0_hist: tuple[list, list] | None = None) -> None:
    """Left: histogram of log10 firing frequency per latent (dead latents counted in the title).
    Right (when given): histogram of active latents per token (L0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = freq.numpy()
    n = max(1, int(f.size))
    if l0_hist and int(np.count_nonzero(np.asarray(l0_hist[0]))) <= 1:
        title += f"; L0 = {_single_l0(l0_hist)} on every token (TopK: no L0 panel)"
        l0_hist = None  # one bar (TopK fixes L0 at k): a panel that says nothing
    fig, axes = plt.subplots(1, 2 if l0_hist else 1, figsize=(10 if l0_hist else 6, 3.5), squeeze=False)
    ax = axes[0, 0]
    ax.hist(np.log10(f[f > 0]), bins=50, color="#3b6ea8")
    dead = int((f == 0).sum())
    ax.set_xlabel("log10 firing frequency (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}\n{dead} dead of {n} ({100 * dead / n:.1f}%)", fontsize=9)
    if l0_hist:
        counts, edges = l0_hist
        ax = axes[0, 1]
        ax.stairs(counts, edges, fill=True, color="#a8573b")
        ax.set_xlabel("active latents per token (L0)")
        ax.set_ylabel("tokens")
        ax.set_title("L0 per token", fontsize=9)
    fig.tight_layout()
    write_figure(path, fig)


def _single_l0(l0_hist) -> str:
    counts, edges = (np.asarray(x, float) for x in l0_hist)
    nz = np.flatnonzero(counts)
    return f"{(edges[nz[0]] + edges[nz[0] + 1]) / 2:g}" if len(nz) else "0"
