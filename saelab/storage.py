"""Files on disk: the cache folder, atomic writes, and safetensors reads with clear errors.

Every artefact is written to a temporary file in the same folder and renamed into place, so a
crash or a kill never leaves a half-written file where a good one used to be.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError
from .out_folder import check_writable, refuse_nonempty, refuse_replacing_names
from .out_lock import check_free


def cache_dir() -> Path:
    """Where models and token caches live: $SAELAB_CACHE, else ~/.cache/saelab."""
    root = Path(os.environ.get("SAELAB_CACHE", Path.home() / ".cache" / "saelab"))
    root.mkdir(parents=True, exist_ok=True)
    return root


_UMASK = os.umask(0)
os.umask(_UMASK)


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no space left; disk quota exceeded


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_message(folder: Path, needed: int | None = None) -> str:
    """One line for a write that found the disk full (ENOSPC / EDQUOT): the folder, the space left there,
    the space the write needed (when known), and that the run can be continued once there is room."""
    folder = Path(folder)
    there = next((q for q in (folder, *folder.parents) if q.exists()), Path("."))
    try:
        free = f"{_size(shutil.disk_usage(there).free)} free"
    except OSError:
        free = "free space unknown"
    need = f", the file being written needs {_size(needed)}" if needed else ""
    return (
        f"disk full writing in {folder} ({free}{need}); free some space (or choose another folder) and rerun: "
        f"a cache resumes where it stopped, a training run with --resume"
    )


def _atomic(path: Path, write, nbytes: int | None = None) -> None:
    """`write(tmp)` then rename to `path`; a disk-full write is a UserError naming the folder and the
    space (`nbytes`: what the file holds, when known) and leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise UserError(disk_full_message(path.parent, nbytes)) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, w)


def write_text(path: Path, text: str) -> None:
    """A text file (HTML, Markdown), atomically."""

    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, w)


def refuse_replacing(folder: Path, names, overwrite: bool, what: str) -> None:
    """Before any work: a command that writes `names` into an existing `folder` (a run folder, say)
    must not replace any of them without --overwrite. The kindless form of out_folder.open_out."""
    check_writable(folder)
    refuse_replacing_names(folder, names, overwrite, what)


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


def read_npy(path: Path, shape: tuple | None = None):
    """A .npy as a read-only memory map (never pickle); a truncated or damaged file, or one whose
    shape is not `shape` (None entries: any size), is a UserError naming it."""
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); it is corrupt or truncated") from e
    if shape is not None and (a.ndim != len(shape) or any(w is not None and w != n for w, n in zip(shape, a.shape))):
        raise UserError(
            f"{path} has shape {tuple(a.shape)}, expected {tuple('*' if w is None else w for w in shape)}; "
            f"it is corrupt or truncated"
        )
    return a


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    nbytes = sum(v.numel() * v.element_size() for v in tensors.values())
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), nbytes)


def write_npy(path: Path, arr) -> None:
    """A .npy, atomically (fsync, rename): a crash or a full disk never leaves a half file or a temporary."""
    import numpy as np

    def w(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, w, arr.nbytes)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load safetensors only (never pickle): a corrupt or truncated file gets a clear error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); it is corrupt or truncated") from e


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header alone (nothing is loaded), so
    sizes a config claims can be checked before anything that size is allocated."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); it is corrupt or truncated") from e


def fingerprint(*parts: Any) -> str:
    """A short stable hash of anything JSON-serialisable (used to key caches and data)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def refuse_overwrite(path: Path, overwrite: bool, what: str = "output") -> None:
    """Before any work: the output folder must be a folder we can write, and empty unless --overwrite.
    The kindless form of out_folder.open_out, for writers not yet given a RunKind."""
    check_writable(path, what)
    refuse_nonempty(path, overwrite, what, " (or --resume to continue a run)")
    check_free(path, what)  # never while another process writes it (out_lock.py)


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
                warnings.warn(f"{path}: ignoring a truncated last line (a run was interrupted)", stacklevel=2)
                continue
            raise UserError(f"{path}:{i + 1} is not valid JSON; the file is corrupt") from None
    return out


def trim_jsonl(path: Path, keep) -> int:
    """Rewrite a JSON-lines log (atomically) with only the records `keep(record)` accepts, dropping
    unreadable lines (a line cut by a kill): what a resumed run does before it appends again, so
    the log has neither a broken line nor the lines of steps it redoes. Returns lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and keep(rec):
            kept.append(line)
    if len(kept) != len(lines):
        _atomic(path, lambda tmp: Path(tmp).write_text("".join(x + "\n" for x in kept), encoding="utf-8"))
    return len(lines) - len(kept)
