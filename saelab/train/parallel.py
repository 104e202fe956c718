"""How a training run shares its work between processes. The loop calls these hooks at fixed
points; a single process does nothing at any of them. `distributed.py` has the torchrun versions."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import load_checkpoint


class SingleProcess:
    is_main = True

    def check(self, cfg) -> None:
        """Options this way of training cannot honour fail here, before anything loads."""

    def check_resume(self, meta: dict, out: Path) -> None:
        if meta.get("world_size", 1) != 1:
            raise UserError(
                f"--resume: the checkpoint in {out} was written by {meta['world_size']} processes "
                f"({meta.get('distributed')}); resume it with the same torchrun --nproc_per_node"
            )

    def describe(self) -> dict:
        """Recorded in checkpoints and the manifest; part of the resume identity."""
        return {}

    def wrap_stream(self, stream):
        return stream

    def own(self, members: list) -> list:
        """The SAEs this process trains."""
        return members

    def attach(self, objective) -> None:
        pass

    def reduce_grads(self, member) -> None:
        pass

    def sync_fired(self, fired: torch.Tensor) -> torch.Tensor:
        return fired

    def sync_stats(self, stats: dict) -> None:
        """Make one step's statistics of an SAE describe the whole SAE (latent sharding)."""

    def load_checkpoint(self, out: Path, members: list) -> None:
        load_checkpoint(out, members)

    def finalize(self, member, x: torch.Tensor) -> None:
        """The dictionary's end-of-training calibration on recent inputs x (the same on every rank)."""
        member.sae.finalize(x)

    def gather(self, members: list) -> list | None:
        """Every SAE of the run, on the process that writes files (None on the others)."""
        return members

    def all_names(self, members: list) -> list[str]:
        return [m.name for m in members]

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass
