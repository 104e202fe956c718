"""Free disk space, checked before a run writes anything: a writer that can estimate the size of what
it writes (an activation cache, a synthetic cache, a latent cache, a training run's weights and checkpoint)
passes it to out_folder.open_out (`need_bytes`), which refuses when the disk holds less, naming the folder,
the space needed and the space free. Moved-aside files (--overwrite) still take space until the run ends."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UserError


def check_space(path: Path, need_bytes: int, what: str = "--out") -> None:
    """Refuse a run whose estimated output (`need_bytes`) is more than the free space where `path` lives."""
    if not need_bytes:
        return
    parent = next((q for q in (Path(path), *Path(path).parents) if q.exists()), Path("."))
    free = shutil.disk_usage(parent).free
    if need_bytes > free:
        raise UserError(
            f"{what} {path} needs about {_size(need_bytes)} of disk space but {parent} has {_size(free)} free; "
            f"free some space, lower the budget, or choose another {what}"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"
