"""Files on disk: the cache folder, atomic writes, and safetensors reads with clear errors.

Every artefact is written to a temporary file in the same folder and renamed into place, so a
crash or a kill never leaves a half-written file where a good one used to be.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError


def cache_dir() -> Path:
    """Where models and token caches live: $SAELAB_CACHE, else ~/.cache/saelab."""
    root = Path(os.environ.get("SAELAB_CACHE", Path.home() / ".cache" / "saelab"))
    root.mkdir(parents=True, exist_ok=True)
    return root


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, w)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialise {type(o)}")


def write_figure(path: Path, fig, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the file is corrupt or truncated") from e


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load safetensors only (never pickle): a corrupt or truncated file gets a clear error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); it is corrupt or truncated") from e


def fingerprint(*parts: Any) -> str:
    """A short stable hash of anything JSON-serialisable (used to key caches and data)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def refuse_overwrite(path: Path, overwrite: bool, what: str = "output") -> None:
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UserError(
            f"{what} folder {path} already exists and is not empty; pass --overwrite to replace it "
            f"(or --resume to continue a run)"
        )


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file ([] when missing); a truncated last line (the line in flight
    when a run was killed) is skipped with a warning, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the line in flight when a run was killed
                warnings.warn(f"{path}: ignoring a truncated last line (a run was interrupted)")
                continue
            raise UserError(f"{path}:{i + 1} is not valid JSON; the file is corrupt")
    return out
