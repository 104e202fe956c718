"""Training-stage commands: train, cache-activations (hookpoints: commands/hookpoints.py); each calls its
stage function in the Python API (api/stages.py)."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_train(a) -> None:
    from ..api.stages import TrainConfig, train

    train(build_config(TrainConfig, a, a.config))  # one process, or this rank's share under torchrun


def cmd_cache(a) -> None:
    from ..api.stages import CacheConfig, cache_activations

    cache_activations(build_config(CacheConfig, a, a.config))


def register(sub) -> None:
    from ..activations.disk_cache import CacheConfig
    from ..train.config import TrainConfig

    # hookpoints: commands/hookpoints.py
    add_config_command(
        sub,
        "train",
        TrainConfig,
        cmd_train,
        help="train SAEs/transcoders on a model's activations",
        description="Train one SAE per (hookpoint, k or sparsity value, lr) from one LM forward. "
        "A hookpoint 'A->B' trains a transcoder from site A to site B. Globs: '*' "
        "matches within one dotted name segment, '**' across segments.",
    )

    add_config_command(
        sub,
        "cache-activations",
        CacheConfig,
        cmd_cache,
        help="run the LM once and store hookpoint activations on disk",
        description="Writes sharded .npy activations (float32, or half precision with --store-dtype "
        "float16|bfloat16: half the disk, read back as float32; memory-mappable; sinks/outliers left "
        "out as in training) and manifest.json. Train from it with "
        "`saelab train --from-activations DIR` (no LM needed).",
    )
