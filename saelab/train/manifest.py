"""RUN/manifest.json of a training run: full config, versions, data, position, speed, final stats."""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import torch

from .. import __version__
from ..storage import write_json


def versions() -> dict:
    import numpy
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_manifest(
    out: Path, cfg, data: dict, pos, loop_s: float, saes: dict[str, tuple[Path, dict]], parallel: dict
) -> None:
    manifest = {
        "command": "train",
        "config": cfg.to_dict(),
        "saelab_version": __version__,
        "versions": versions(),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "data": data,
        "seed": cfg.seed,
        "wall_s": pos.wall_s,
        "lm_tokens": pos.lm_tokens,
        "requested_tokens": cfg.tokens,
        "steps": pos.steps,
        "tokens_per_s": pos.lm_tokens / max(loop_s, 1e-9),
        "excluded_positions": pos.excluded,
        "peak_rss_mb": peak_rss_mb(),
        "saes": {name: {"folder": str(folder), "final": stats} for name, (folder, stats) in saes.items()},
    }
    if parallel:
        manifest["distributed"] = {"world_size": parallel["world_size"], "mode": parallel["distributed"]}
    write_json(Path(out) / "manifest.json", manifest)
