"""The input folder of a command is the kind of folder it reads: a command given a training run where it
wants an interpretation run (or any other mix-up) says what the folder holds and what it expected, in one
line, instead of failing on a missing key further on. Kinds are out_folder's (`kind_of` names them)."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .out_folder import RunKind, kind_of


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" or name.startswith("SAE") else "a ") + name


def what_it_holds(folder: Path) -> str:
    """'holds a training run' | 'is empty' | 'does not exist' | ... for messages."""
    folder = Path(folder)
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "is a file, not a folder"
    held = kind_of(folder)
    if held:
        return f"holds {_a(held.name)}"
    return "is empty" if not any(folder.iterdir()) else "holds nothing saelab wrote"


def require_kind(folder: Path, kind: RunKind, hint: str, what: str = "") -> Path:
    """`folder` if it holds a `kind` run; else a UserError naming what it holds, what was expected and `hint`."""
    folder = Path(folder)
    if kind.holds(folder):
        return folder
    lead = f"{what} {folder}" if what else str(folder)
    raise UserError(f"{lead} {what_it_holds(folder)}, not {_a(kind.name)}; {hint}")
