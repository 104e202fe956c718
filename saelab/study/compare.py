"""`saelab compare A B`: decoder geometry of two dictionaries at the same site (Braun et al. 2024,
section 3.3): for each alive decoder direction of A, its max cosine similarity to B's alive
directions (cross) and to A's other alive directions (within A), with summary statistics and
histograms. Comparing two seeds of one setting gives the baseline for "the same features".

Alive = fired at least once on `tokens` held-out positions (sinks excluded), measured with the
truncated forward on the model and held-out rows both SAEs were trained with (`open_shared_data`:
they must agree unless --model / --corpus say otherwise); `tokens=0` skips the model and uses
every latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..evaluate.metrics import EvalBudget, reconstruction_metrics
from ..evaluate.seed_match import unit_decoder
from ..option_checks import check_types, need_at_least
from ..options import corpus_option, model_option, opt, out_option, overwrite_option, threads_option
from ..sae.folder import SaeFolder, open_sae, open_shared_data
from ..storage import write_figure, write_json


def max_cosines(a: torch.Tensor, b: torch.Tensor | None = None, block: int = 4096) -> torch.Tensor:
    """For each row of a [n, d]: max cosine to the rows of b [m, d] (or to the other rows of a)."""
    same = b is None
    b = a if same else b
    out = torch.empty(a.shape[0])
    for s in range(0, a.shape[0], block):
        sim = a[s : s + block] @ b.T
        if same:
            idx = torch.arange(s, min(s + block, a.shape[0]))
            sim[idx - s, idx] = -2.0
        out[s : s + block] = sim.max(1).values
    return out


def summary(x: torch.Tensor) -> dict:
    v = x.numpy()
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p10": float(np.quantile(v, 0.1)),
        "p90": float(np.quantile(v, 0.9)),
        "frac_above_0.9": float((v > 0.9).mean()),
        "frac_above_0.7": float((v > 0.7).mean()),
        "frac_below_0.5": float((v < 0.5).mean()),
    }


@torch.no_grad()
def firing(
    folders: list[SaeFolder], tokens: int, model: str | None = None, corpus: str | None = None
) -> tuple[list[torch.Tensor], bool | None]:
    """Per SAE, bool [d_sae]: fired at least once on `tokens` held-out non-sink positions; and
    whether those rows are the held-out rows of the data they trained on (None: unknown)."""
    data = open_shared_data(folders, model=model, corpus=corpus)
    saes = [(f.sae, f.provenance.sink) for f in folders]
    _, stats = reconstruction_metrics(data.lm.model, data.lm.tokenizer, saes, data.rows, EvalBudget(tokens=tokens))
    return [f > 0 for f in stats.firing], data.matches_training


@dataclass
class CompareConfig:
    """`saelab compare A B`: two SAE folders at one site; model and corpus are theirs unless overridden."""

    a: str = opt(help="SAE folder A", positional=True)
    b: str = opt(help="SAE folder B (same site)", positional=True)
    out: str | None = out_option("output folder", shown="A/compare_<B name>")
    tokens: int = opt(50_000, "held-out tokens to find alive latents (0: all latents)")
    model: str | None = model_option(None, shown="the one recorded in A and B (they must agree otherwise)")
    corpus: str | None = corpus_option(None, shown="A's and B's held-out rows")
    threads: int | None = threads_option()
    overwrite: bool = overwrite_option("an existing compare.json")

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "threads")
        need_at_least(self, 0, "tokens")


def compare_folders(cfg: CompareConfig) -> dict:
    """Decoder geometry of A against B (and within A) into cfg.out (default A/compare_<B name>)."""
    cfg.validate()
    fa, fb = _open_pair(cfg)
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.a) / f"compare_{Path(cfg.b).name}"
    if (out_dir / "compare.json").exists() and not cfg.overwrite:
        raise UserError(f"{out_dir / 'compare.json'} exists; pass --overwrite to replace it")
    if cfg.tokens < 0:
        raise UserError("--tokens must be >= 0")
    a, b = fa.sae, fb.sae
    matches = None
    if cfg.tokens:
        (alive_a, alive_b), matches = firing([fa, fb], cfg.tokens, cfg.model, cfg.corpus)
    else:
        alive_a, alive_b = torch.ones(a.cfg.d_sae, dtype=torch.bool), torch.ones(b.cfg.d_sae, dtype=torch.bool)
    if alive_a.sum() < 2 or alive_b.sum() < 1:
        raise UserError("too few alive latents to compare (A needs 2, B needs 1)")
    da, db = unit_decoder(a)[alive_a], unit_decoder(b)[alive_b]
    cross, within = max_cosines(da, db), max_cosines(da)
    result = {
        "a": str(cfg.a),
        "b": str(cfg.b),
        "site": a.cfg.out_hookpoint or a.cfg.hookpoint,
        "model": fa.provenance.model_name,
        "alive_tokens": cfg.tokens,
        "data_matches_training": matches,
        "alive_a": int(alive_a.sum()),
        "alive_b": int(alive_b.sum()),
        "d_sae_a": a.cfg.d_sae,
        "d_sae_b": b.cfg.d_sae,
        "cross_max_cosine": summary(cross),
        "within_a_max_cosine": summary(within),
        "descriptions": DESCRIPTIONS,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _histograms(cross, within, out_dir / "compare.png", Path(cfg.a).name, Path(cfg.b).name)
    result["plot"] = "compare.png"
    write_json(out_dir / "compare.json", result)
    return result


DESCRIPTIONS = {
    "cross_max_cosine": "per alive decoder direction of A: max cosine to B's alive directions",
    "within_a_max_cosine": "per alive decoder direction of A: max cosine to A's other alive directions",
}


def _open_pair(cfg: CompareConfig) -> tuple[SaeFolder, SaeFolder]:
    """A and B, refused unless they write the same site of one model."""
    fa, fb = open_sae(Path(cfg.a)), open_sae(Path(cfg.b))
    a, b = fa.sae.cfg, fb.sae.cfg
    site_a, site_b = a.out_hookpoint or a.hookpoint, b.out_hookpoint or b.hookpoint
    if site_a != site_b or a.d_out != b.d_out:
        raise UserError(
            f"{cfg.a} writes {site_a} (width {a.d_out}) but {cfg.b} writes {site_b} (width "
            f"{b.d_out}); decoder directions are comparable only at the same site"
        )
    ma, mb = fa.provenance.model_name, fb.provenance.model_name
    if ma != mb:
        raise UserError(f"{cfg.a} belongs to {ma} and {cfg.b} to {mb}; compare dictionaries of one model")
    return fa, fb


def _histograms(cross: torch.Tensor, within: torch.Tensor, path: Path, name_a: str, name_b: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    bins = np.linspace(-0.2, 1.0, 61)
    for ax, v, t in ((axes[0], cross, f"A={name_a} to B={name_b}"), (axes[1], within, f"within A={name_a}")):
        ax.hist(v.numpy(), bins=bins, color="#3b6ea8")
        ax.axvline(float(v.median()), color="k", ls="--", lw=1, label=f"median {float(v.median()):.3f}")
        ax.set_xlabel("max cosine similarity of each alive decoder direction")
        ax.set_ylabel("latents")
        ax.set_title(t, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig)
