"""A small random TopK SAE on the tiny test model, saved as a real SAE folder (for steer / dashboard / app tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.sinks import SinkConfig


def make_sae_folder(
    folder: Path,
    model_dir: Path,
    corpus: Path,
    d_sae: int = 128,
    k: int = 8,
    seed: int = 0,
    hookpoint: str = "model.layers.1",
) -> Path:
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=d_sae, hookpoint=hookpoint, k=k))
    g = torch.Generator().manual_seed(seed)
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)  # decoder rows of norm 3: an edit visibly moves the residual stream (d=64)
    save_sae(
        sae.eval(),
        folder,
        Provenance(
            model_spec=str(model_dir),
            model_name="tiny",
            corpus=str(corpus),
            context=64,
            sink=SinkConfig(first_positions=1, mask_special=True, norm_factor=5.0),
        ),
    )
    return folder


SMALL_EXAMPLES = [
    "--window",
    "16",
    "--n-explain",
    "8",
    "--n-score-activating",
    "10",
    "--n-score-random",
    "5",
    "--n-score-hard",
    "5",
]


def make_interpretation_run(sae_dir: Path, tmp: Path, n_latents: int = 2):
    """What a user runs: `saelab cache` (with a neurons baseline) -> `explain --explainer stats` -> `score
    --scorers embedding` (both offline), for the SAE in `sae_dir` -> (cache, run, neurons run, latents)."""
    import numpy as np

    from saelab.cli import main
    from saelab.features.latent_cache import LatentCache

    cache = tmp / "cache"
    assert (
        main(
            [
                "cache",
                str(sae_dir),
                "--tokens",
                "2048",
                "--out",
                str(cache),
                "--neurons",
                "model.layers.1.mlp.down_proj:input",
                "--neuron-k",
                "4",
            ]
        )
        == 0
    )
    lc = LatentCache.open(cache)
    name = next(n for n in lc.sae_names if lc.info(n)["kind"] == "sae")
    nname = next(n for n in lc.sae_names if lc.info(n)["kind"] == "neurons")
    lat = [int(j) for j in np.argsort(-lc.fire_counts(name), kind="stable")[:n_latents]]
    run, nrun = tmp / "run", tmp / "neurons_run"
    assert (
        main(
            [
                "explain",
                str(cache),
                "--dictionary",
                name,
                "--latents",
                *map(str, lat),
                "--explainer",
                "stats",
                *SMALL_EXAMPLES,
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert main(["score", str(run), "--scorers", "embedding"]) == 0
    assert (
        main(
            [
                "explain",
                str(cache),
                "--dictionary",
                nname,
                "--latents",
                "0",
                "--explainer",
                "stats",
                *SMALL_EXAMPLES,
                "--out",
                str(nrun),
            ]
        )
        == 0
    )
    return cache, run, nrun, lat
