"""`saelab steer` as a function: `steer(SteerConfig)` opens the SAE folder (or none, for a contrastive
direction), the latents' max activations when an edit is a multiple of them (the given latent cache,
or one built over `tokens` held-out tokens as the feature pages do: feature_store.ensure_cache), and
the model, then runs the steering request (features/steering.py) and writes `json` when asked.
It lives in view/ because the max activations come from the feature pages' cache."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError
from ..features.steering import SteerConfig, SteeringResult, never_fired, run_steering, sink_positions
from ..models import load_model
from ..sae.folder import check_fits, open_sae
from ..storage import write_json
from .feature_store import ensure_cache


def steer(cfg: SteerConfig, on_result: Callable[[str, dict], None] | None = None) -> SteeringResult:
    """Steered and unsteered generations of every prompt (`on_result` gets each as it is done)."""
    cfg.validate()
    req = cfg.request()
    if cfg.json and Path(cfg.json).exists():
        raise UserError(f"{cfg.json} exists; choose another --json")
    folder = open_sae(Path(cfg.sae)) if cfg.sae else None
    sae, cfg_json = (folder.sae, folder.cfg) if folder else (None, None)
    req.check_sae(sae)
    model_spec = cfg.model or (folder.provenance.model_spec if folder else "embedded")
    max_acts = lm = None
    if req.needs_max_acts:
        if cfg.cache is None and not cfg.model:  # the cache is built with the SAE's own model: load it once
            lm = folder.open_model(dtype=cfg.dtype)
        lc, name = ensure_cache(Path(cfg.sae), sae.cfg.d_sae, cfg.cache, cfg.tokens, loaded_model=lm)
        max_acts = torch.from_numpy(lc.max_activation(name).copy())
        for w in never_fired(req.edits, max_acts):  # said before the generation, not after it
            print(f"saelab: warning: {w}", file=sys.stderr)
    if lm is None:
        lm = folder.open_model(model=cfg.model, dtype=cfg.dtype) if folder else load_model(model_spec, dtype=cfg.dtype)
    if folder:
        check_fits([folder], lm.model)  # a 512-wide SAE on a 576-wide site (another --model): a clear error
    res = run_steering(req, lm.model, lm.tokenizer, sae, max_acts, sink_positions(cfg_json), on_result=on_result)
    if cfg.json:
        write_json(
            Path(cfg.json),
            {
                "sae": cfg.sae,
                "model": model_spec,
                "steering": res.steering,
                "seed": cfg.seed,
                "temperature": cfg.temperature,
                "max_new_tokens": cfg.max_new_tokens,
                "results": res.results,
                "warnings": res.warnings,
            },
        )
    return res
