"""Free disk space, checked before a run writes anything: a writer that can estimate the size of what
it writes (an activation cache, a synthetic cache, a latent cache, a training run's weights and checkpoint)
passes it to out_folder.open_out (`need_bytes`), which refuses when the disk holds less, naming the folder,
the space needed and the space free. Moved-aside files (--overwrite) still take space until the run ends."""

from __future__ import annotations

from pathlib import Path

from .budgets import free_bytes, human_bytes
from .errors import UserError


def check_space(path: Path, need_bytes: int, what: str = "--out") -> None:
    """Refuse a run whose estimated output (`need_bytes`) is more than the free space where `path` lives."""
    if not need_bytes:
        return
    free = free_bytes(path)
    if need_bytes > free:
        raise UserError(
            f"{what} {path} needs about {human_bytes(need_bytes)} of disk space; only {human_bytes(free)} is free "
            f"there. Free some space, lower the budget, or choose another {what}"
        )
