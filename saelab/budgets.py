"""Sizes checked before they allocate, and budgets checked before they start: what a command will hold in
memory or write to disk, estimated from its options and compared with what the machine has, so a typo'd
`--features 100000000000` or `--tokens 1000000000000` is one line naming the size, not an allocator crash
after minutes of work or a disk filled to the last byte (docs/RELIABILITY.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UserError
from .option_checks import memory_bytes

MAX_TOKENS = 10**14  # a token budget above this is a typo: 100 trillion, several times any LM's pretraining set


def need_sane_tokens(tokens: int, flag: str = "--tokens") -> None:
    """A budget that could never finish (`"tokens": 1e300`) is refused up front, not started."""
    if tokens > MAX_TOKENS:
        raise UserError(
            f"{flag} {tokens:.3g} is more than {MAX_TOKENS:.0e} tokens, a budget no run can finish; "
            f"give the number of tokens to train on"
        )


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; one unit for messages that compare two sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def need_memory(need: float, what: str, fix: str, device: str = "cpu") -> None:
    """Refuse when `need` bytes (a lower bound of what `what` holds at once) exceed the device's memory."""
    have = memory_bytes(device)
    if have and need > have:
        raise UserError(f"{what} needs at least {human_bytes(need)} of memory; {device} has {human_bytes(have)}. {fix}")


def free_bytes(path: Path) -> int:
    """Free space on the file system that `path` (or its nearest existing parent) lives on."""
    p = Path(path).absolute()
    existing = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    return shutil.disk_usage(existing).free
