"""Model diffing with a crosscoder over the same sites of two models (Lindsey et al. 2024): which
latents belong to model A only, to model B only, or to both, read from the decoder alone.

Per latent j, with ||W_dec_A[j]|| the norm of its decoder over A's sites (several sites: their
concatenation) and ||W_dec_B[j]|| over B's,

    r_j = ||W_dec_B[j]|| / (||W_dec_A[j]|| + ||W_dec_B[j]||)

r ~ 0: the latent only writes to A (a feature B lacks at the site), r ~ 1: B only, 0.5: both alike.
Counts use the paper's cut-offs: A-only r < 0.1, B-only r > 0.9, shared otherwise; for shared
latents the cosine between the A and B decoder vectors says whether they write the same direction.
Norms are in the training space (each site scaled to E||x||^2 = d, `CrosscoderSae.site_norms`), so a
model whose activations are simply larger does not look like it owns every latent. All latents count,
dead ones included (eval reports the dead fraction beside it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model_pair import is_b_site
from ..sae.crosscoder import CrosscoderSae, sites
from ..storage import write_figure

A_ONLY, B_ONLY = 0.1, 0.9
BINS = 20


def is_model_diff(sae) -> bool:
    return any(is_b_site(h) for h in sites(sae.cfg))


@torch.no_grad()
def decoder_halves(sae: CrosscoderSae) -> tuple[torch.Tensor, torch.Tensor]:
    """[d_sae, n_A * d] and [d_sae, n_B * d]: each latent's decoder over A's sites and over B's (same
    site order in both), in the training space."""
    w = (sae.W_dec * (sae.site_scale / sae.out_scale)).view(sae.cfg.d_sae, sae.n_sites, sae.d_site)
    b = torch.tensor([is_b_site(h) for h in sites(sae.cfg)], device=w.device)
    return w[:, ~b].flatten(1).float().cpu(), w[:, b].flatten(1).float().cpu()


def relative_norms(sae: CrosscoderSae) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent: r_j, and the cosine between its A and B decoder vectors."""
    wa, wb = decoder_halves(sae)
    na, nb = wa.norm(dim=1), wb.norm(dim=1)
    return nb / (na + nb).clamp_min(1e-12), F.cosine_similarity(wa, wb, dim=1)


def model_diff_analysis(sae: CrosscoderSae) -> dict:
    """Relative decoder norms, A-only / B-only / shared counts and shared latents' A-B cosines."""
    r, cos = relative_norms(sae)
    a_only, b_only = r < A_ONLY, r > B_ONLY
    shared = ~(a_only | b_only)
    cos = cos[shared]
    counts, edges = np.histogram(r.numpy(), bins=BINS, range=(0.0, 1.0))
    out = {
        "latents": int(r.numel()),
        "a_only": int(a_only.sum()),
        "b_only": int(b_only.sum()),
        "shared": int(shared.sum()),
        "thresholds": [A_ONLY, B_ONLY],
        "relative_norm_mean": r.mean().item(),
        "relative_norm_median": r.median().item(),
        "relative_norm_histogram": counts.tolist(),
        "relative_norm_edges": edges.tolist(),
        "a_only_latents": torch.nonzero(a_only).flatten().tolist(),
        "b_only_latents": torch.nonzero(b_only).flatten().tolist(),
    }
    if cos.numel():
        c_counts, c_edges = np.histogram(cos.numpy(), bins=BINS, range=(-1.0, 1.0))
        out |= {
            "shared_cosine_mean": cos.mean().item(),
            "shared_cosine_median": cos.median().item(),
            "shared_cosine_histogram": c_counts.tolist(),
            "shared_cosine_edges": c_edges.tolist(),
        }
    return out


def model_diff_plot(sae: CrosscoderSae, path: Path, title: str) -> None:
    """Left: histogram of r_j (the A-only / B-only cut-offs marked). Right: cosine of shared latents'
    A and B decoders. The style of evaluate/plots.py."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, cos = (t.numpy() for t in relative_norms(sae))
    shared = (r >= A_ONLY) & (r <= B_ONLY)
    cos = cos[shared]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    ax = axes[0]
    ax.hist(r, bins=50, range=(0, 1), color="#3b6ea8")
    for t in (A_ONLY, B_ONLY):
        ax.axvline(t, color="#777777", lw=0.8, ls="--")
    ax.set_xlabel("relative decoder norm ||W_B|| / (||W_A|| + ||W_B||)")
    ax.set_ylabel("latents")
    ax.set_title(
        f"{title}\nA-only {int((r < A_ONLY).sum())}, B-only {int((r > B_ONLY).sum())}, "
        f"shared {int(shared.sum())} of {r.size}",
        fontsize=9,
    )
    ax = axes[1]
    ax.hist(cos, bins=50, range=(-1, 1), color="#a8573b")
    ax.set_xlabel("cosine of a shared latent's A and B decoders")
    ax.set_ylabel("latents")
    ax.set_title("shared latents", fontsize=9)
    fig.tight_layout()
    write_figure(path, fig)
