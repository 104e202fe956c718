"""`resolve(config) -> TrainingPlan`: a training run's setup, worked out and checked once, in one place.

What the user asked for (`TrainConfig`) and what the run trains (the plan) differ only by --init-from,
whose dictionary fixes arch, latents, k or coefficient, sites, skip and its type's recorded options,
and by --layers, whose MLP sites (train/layers.py, from the model's config) become the hookpoints.
`resolve` checks the run's own options (`TrainConfig.check_run`), adopts the dictionary into a NEW
config (the user's is never rewritten), then checks what the dictionary is (`check_dictionary`) on
the config that will train: every rule once, on the values it is about. The plan is frozen; the loop
(loop.py) and everything it calls read it. Nothing here loads weights or a model; torchrun's own
rules are checked where its process group forms (distributed.Distributed), on `plan.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..sae import SparseCoder
from .config import TrainConfig
from .init_from import InitSource, adopt_dictionary
from .layers import LayerPlan, layer_plan
from .members import parse_sites


@dataclass(frozen=True)
class TrainingPlan:
    config: TrainConfig  # the options the run trains with (--init-from's adopted in)
    kind: type[SparseCoder]  # the dictionary type (sae/registry.py)
    patterns: tuple[tuple[str, str | None], ...]  # (input site pattern, transcoder output pattern or None)
    sweep: tuple[tuple[int | None, float, float], ...]  # (k, sparsity coefficient, lr) per SAE at each site
    objective: str  # --loss, or "local then kl+mse" with --finetune-fraction
    source: str  # where batches come from: the LM(s) on the corpus, or a cache
    init: InitSource | None = None  # the dictionary the run starts from (--init-from)
    layers: LayerPlan | None = None  # --layers: the replacement's layers and sites (replacement.json)

    @property
    def parallel_mode(self) -> str:
        """--distributed (read only under torchrun)."""
        return self.config.distributed


def resolve(cfg: TrainConfig) -> TrainingPlan:
    """The checked, frozen plan of `cfg`; `cfg` itself is not modified."""
    cfg = dataclasses.replace(cfg)  # the caller's object stays theirs (check_types normalises values)
    cfg.check_run()
    cfg.batch_tokens = cfg.step_tokens  # its default depends on the loss and budget (finetune_budget.py)
    init = layers = None
    if cfg.layers is not None:  # the family's MLP sites of those layers (their range checked from the config)
        layers = layer_plan(cfg.model, cfg.layers)
        cfg.hookpoints = layers.hookpoints
    if cfg.init_from:
        init, cfg = adopt_dictionary(cfg)
    cfg.check_dictionary()
    objective = f"local then kl+mse ({cfg.finetune_fraction})" if cfg.finetune_fraction else cfg.loss
    source = (
        f"activation cache {cfg.from_activations}"
        if cfg.from_activations
        else f"model {cfg.model}" + (f" and {cfg.model_b}" if cfg.model_b else "") + f" on corpus {cfg.corpus}"
    )
    return TrainingPlan(
        cfg, cfg.kind, tuple(parse_sites(cfg.hookpoints)), tuple(cfg.sweep_values()), objective, source, init, layers
    )
