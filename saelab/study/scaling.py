"""Scaling laws for SAEs (after Templeton et al. 2024, "Scaling Monosemanticity"): train a grid of
dictionary sizes x training tokens, measure held-out FVU, fit power laws, plot.

The LM runs once: the grid trains from one activation cache of the largest token budget (every
grid point reads a prefix-free, seeded shuffle of it), and one held-out pass evaluates every SAE.

Fits (least squares in log-log space):
  FVU(N)  = a * N^-alpha        over dictionary sizes N at the largest token budget
  FVU(D)  = b * D^-beta         over token budgets D at the largest dictionary
  FVU*(C) = c * C^-gamma        over the compute frontier: for each compute C = 6 * D * N * d_in
                                (training FLOPs of a dense SAE), the best FVU reached at <= C
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from ..option_checks import check_types, need_at_least
from ..options import corpus_option, model_option, opt, out_option, overwrite_option, threads_option
from ..out_folder import finish, hold
from ..storage import read_json, refuse_overwrite, write_figure, write_json


@dataclass
class ScalingConfig:
    out: str = out_option("folder for the grid's runs, scaling.json and scaling.png")
    hookpoint: str = opt("model.layers.6", "one site (module name)")
    latents: list[int] = opt(
        default_factory=lambda: [512, 1024, 2048, 4096],
        help="dictionary sizes of the grid",
        flag="--dict-size",
        old_spellings=("--latents",),
    )
    tokens: list[int] = opt(default_factory=lambda: [16384, 32768, 65536], help="training-token budgets of the grid")
    k: int = opt(32, "TopK active latents (the same for every grid point)")
    model: str = model_option()
    corpus: str = corpus_option()
    context: int = opt(256, "tokens per row fed to the LM")
    batch_tokens: int = opt(4096, "tokens per optimiser step (and per LM forward batch)")
    eval_tokens: int = opt(16384, "held-out tokens for the FVU of every grid point")
    lr: float | None = opt(None, "learning rate (none: training's 2e-3 / sqrt(dict size / 2^14))")
    cache: str | None = opt(None, "reuse this activation cache (same model, hookpoint, context; >= max tokens)")
    seed: int = opt(0, "random seed (data order, initialisation)")
    threads: int | None = threads_option()
    overwrite: bool = overwrite_option()

    def validate(self) -> None:
        """Types and ranges, before anything runs."""
        check_types(self)
        need_at_least(self, 1, "latents", "tokens", "k", "batch_tokens", "eval_tokens", "threads")
        need_at_least(self, 2, "context")
        need_at_least(self, 0, "seed")
        if self.lr is not None and self.lr <= 0:
            raise UserError("--lr must be positive")
        if len(self.latents) < 2 or len(self.tokens) < 2:
            raise UserError("a scaling grid needs at least two --dict-size and two --tokens values")
        if any(n < self.k for n in self.latents):
            raise UserError(f"every --dict-size value must be >= --k {self.k}")
        if self.batch_tokens < self.context:
            raise UserError(
                f"--batch-tokens ({self.batch_tokens}) must hold at least one row of --context ({self.context})"
            )
        if any(d < self.batch_tokens for d in self.tokens):
            raise UserError(f"every --tokens value must be >= --batch-tokens {self.batch_tokens}")


def power_law(x, y) -> dict:
    """y = a * x^-alpha fitted in log-log space; r2 of that line."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.any(x <= 0) or np.any(y <= 0):
        return {"a": None, "alpha": None, "r2": None, "points": len(x)}
    lx, ly = np.log(x), np.log(y)
    slope, icpt = np.polyfit(lx, ly, 1)
    pred = slope * lx + icpt
    ss = ((ly - ly.mean()) ** 2).sum()
    r2 = float(1 - ((ly - pred) ** 2).sum() / ss) if ss > 0 else 1.0
    return {"a": float(math.exp(icpt)), "alpha": float(-slope), "r2": r2, "points": len(x)}


def frontier(points: list[dict]) -> list[dict]:
    """Points that reach a lower FVU than every cheaper point (the compute-efficient frontier)."""
    best, out = float("inf"), []
    for p in sorted(points, key=lambda p: (p["compute"], p["fvu"])):
        if p["fvu"] < best:
            best = p["fvu"]
            out.append(p)
    return out


def fit(points: list[dict]) -> dict:
    n_max, d_max = max(p["latents"] for p in points), max(p["tokens"] for p in points)
    by_n = sorted((p for p in points if p["tokens"] == d_max), key=lambda p: p["latents"])
    by_d = sorted((p for p in points if p["latents"] == n_max), key=lambda p: p["tokens"])
    fr = frontier(points)
    return {
        "fvu_vs_latents": power_law([p["latents"] for p in by_n], [p["fvu"] for p in by_n]) | {"at_tokens": d_max},
        "fvu_vs_tokens": power_law([p["tokens"] for p in by_d], [p["fvu"] for p in by_d]) | {"at_latents": n_max},
        "fvu_vs_compute_frontier": power_law([p["compute"] for p in fr], [p["fvu"] for p in fr])
        | {"frontier": [(p["latents"], p["tokens"]) for p in fr]},
    }


def plot(points: list[dict], fits: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({p["latents"] for p in points})
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(sizes):
        ps = sorted((p for p in points if p["latents"] == n), key=lambda p: p["compute"])
        ax1.plot(
            [p["compute"] for p in ps],
            [p["fvu"] for p in ps],
            "o-",
            color=cmap(i / max(1, len(sizes) - 1)),
            label=f"{n} latents",
        )
    f = fits["fvu_vs_compute_frontier"]
    if f["alpha"] is not None:
        cs = np.geomspace(min(p["compute"] for p in points), max(p["compute"] for p in points), 50)
        ax1.plot(cs, f["a"] * cs ** -f["alpha"], "k--", label=f"frontier: FVU ∝ C^-{f['alpha']:.3f}")
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="training compute C = 6·tokens·latents·d_in (FLOPs)",
        ylabel="held-out FVU",
        title="FVU vs compute",
    )
    ax1.legend(fontsize=8)
    d_max = max(p["tokens"] for p in points)
    ps = sorted((p for p in points if p["tokens"] == d_max), key=lambda p: p["latents"])
    ax2.plot([p["latents"] for p in ps], [p["fvu"] for p in ps], "o", color="C1", label=f"{d_max:,} tokens")
    f = fits["fvu_vs_latents"]
    if f["alpha"] is not None:
        ns = np.geomspace(ps[0]["latents"], ps[-1]["latents"], 50)
        ax2.plot(ns, f["a"] * ns ** -f["alpha"], "k--", label=f"FVU ∝ N^-{f['alpha']:.3f}")
    ax2.set(xscale="log", yscale="log", xlabel="latents N", ylabel="held-out FVU", title="FVU vs dictionary size")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_figure(path, fig)


def run_scaling(cfg: ScalingConfig) -> dict:
    from ..activations.disk_cache import CacheConfig, read_manifest, write_cache
    from ..evaluate.metrics import EvalBudget, reconstruction_metrics
    from ..sae.folder import open_sae, open_shared_data
    from ..train.config import TrainConfig
    from ..train.loop import train

    cfg.validate()
    out = Path(cfg.out)
    refuse_overwrite(out, cfg.overwrite, "--out")
    t0 = time.time()
    if cfg.cache:
        cache = Path(cfg.cache)
        m = read_manifest(cache)
        if m["lm_tokens"] < max(cfg.tokens):
            raise UserError(f"--cache {cache} holds {m['lm_tokens']:,} tokens; the grid needs {max(cfg.tokens):,}")
        hold(out)  # the folder's lock: no other writer while the grid runs
    else:
        hold(out)
        cache = out / "activations"
        write_cache(
            CacheConfig(
                out=str(cache),
                hookpoints=[cfg.hookpoint],
                model=cfg.model,
                corpus=cfg.corpus,
                tokens=max(cfg.tokens),
                context=cfg.context,
                batch_tokens=cfg.batch_tokens,
                seed=cfg.seed,
                threads=cfg.threads,
                overwrite=cfg.overwrite,
            )
        )
    runs = []
    for n in sorted(cfg.latents):
        for d in sorted(cfg.tokens):
            run = out / f"n{n}-d{d}"
            tc = TrainConfig(
                out=str(run),
                hookpoints=[cfg.hookpoint],
                model=cfg.model,
                corpus=cfg.corpus,
                from_activations=str(cache),
                latents=n,
                k=[cfg.k],
                tokens=d,
                context=cfg.context,
                batch_tokens=cfg.batch_tokens,
                lr=[cfg.lr] if cfg.lr else None,
                seed=cfg.seed,
                threads=cfg.threads,
                checkpoint_every=10**15,
                overwrite=cfg.overwrite,
            )
            (folder,) = train(tc)
            trained = read_json(run / "manifest.json")["lm_tokens"]  # the budget rounded down to whole batches
            runs.append((n, trained, folder))
    folders = [open_sae(f) for _, _, f in runs]
    data = open_shared_data(folders)  # the model and held-out rows of the activation cache they trained from
    lm, rows = data.lm, data.rows
    metrics, _ = reconstruction_metrics(
        lm.model, lm.tokenizer, [(f.sae, f.provenance.sink) for f in folders], rows, EvalBudget(tokens=cfg.eval_tokens)
    )
    d_in = folders[0].sae.cfg.d_in
    points = [
        {
            "latents": n,
            "tokens": d,
            "compute": 6.0 * d * n * d_in,
            "fvu": m.fvu,
            "l0": m.l0,
            "dead_fraction": m.dead_fraction,
            "folder": str(f),
        }
        for (n, d, f), m in zip(runs, metrics)
    ]
    fits = fit(points)
    result = {
        "command": "scaling",
        "config": asdict(cfg),
        "saelab_version": __version__,
        "model": lm.name,
        "d_in": d_in,
        "points": points,
        "fits": fits,
        "wall_s": time.time() - t0,
        "data_fingerprint": rows.fingerprint,
        "data_matches_training": data.matches_training,
    }
    write_json(out / "scaling.json", result)
    plot(
        points,
        fits,
        out / "scaling.png",
        f"{lm.name} {cfg.hookpoint}, TopK k={cfg.k}, held-out FVU on {cfg.eval_tokens:,} tokens",
    )
    finish(out)
    return result
