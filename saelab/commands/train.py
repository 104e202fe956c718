"""Training-stage commands: train, cache-activations (hookpoints: commands/hookpoints.py)."""

from __future__ import annotations

import time
from pathlib import Path

from ..options import add_config_command, build_config


def cmd_train(a) -> None:
    from ..train.config import TrainConfig
    from ..train.loop import train

    cfg = build_config(TrainConfig, a, a.config)
    t = time.time()
    folders = train(cfg)  # one process, or this rank's share under torchrun
    print(
        f"\ntrained {len(folders)} SAE(s) in {time.time() - t:.0f} s; run manifest: {Path(cfg.out) / 'manifest.json'}"
    )
    for f in folders:
        print(f"  {f}")


def cmd_cache(a) -> None:
    from ..activations.disk_cache import CacheConfig, cache_summary, write_cache

    cfg = build_config(CacheConfig, a, a.config)
    print(cache_summary(write_cache(cfg)))


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
