"""A small random TopK SAE on the tiny test model, saved as a real SAE folder (for steer / dashboard / app tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.sinks import SinkConfig


def make_sae_folder(folder: Path, model_dir: Path, corpus: Path, d_sae: int = 128, k: int = 8, seed: int = 0) -> Path:
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=d_sae, hookpoint="model.layers.1", k=k))
    g = torch.Generator().manual_seed(seed)
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)  # decoder rows of norm 3: an edit visibly moves the residual stream (d=64)
    save_sae(sae.eval(), folder, Provenance(model_spec=str(model_dir), model_name="tiny", corpus=str(corpus), context=64,
                                            sink=SinkConfig(first_positions=1, mask_special=True, norm_factor=5.0)))
    return folder
