"""One writer per output folder: an exclusive `fcntl.flock` on `<out>/.saelab.lock`, with the holder's PID
and command line written in it, so a second writer is refused at once, naming the first:
"RUN is being written by PID 4242 (saelab train --out RUN ...)".

The OS releases a flock when its process dies (kill -9 included), so a lock file left behind by a killed
run blocks nobody: only a live holder refuses. A process may take the same folder's lock again (a test
that trains then resumes in one process); everything still held is released at exit. Used only by
out_folder.py (open_out / OutFolder.prepare and the kindless checks in storage.py), never per command."""

from __future__ import annotations

import atexit
import fcntl
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".saelab.lock"
_HELD: dict[str, int] = {}  # realpath of the folder -> the open lock file's descriptor


def command_line() -> str:
    """This process's command as the user typed it (`saelab train ...`), cut to 300 characters."""
    argv = list(sys.argv) or ["python"]
    head = os.path.basename(argv[0])
    head = {"saelab": "saelab", "__main__.py": "saelab", "-c": "python -c ..."}.get(head, head)
    text = " ".join([head, shlex.join(argv[1:])]).strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _holder(path: Path) -> str:
    try:
        pid, _, cmd = path.read_text(errors="replace").partition("\n")
    except OSError:
        return "another process"
    pid, cmd = pid.strip(), cmd.strip()
    return f"PID {pid} ({cmd})" if pid and cmd else f"PID {pid}" if pid else "another process"


def _busy(folder: Path, what: str) -> UserError:
    return UserError(
        f"{what} {folder} is being written by {_holder(Path(folder) / LOCK_NAME)}; wait for it to finish "
        f"or choose another {what}"
    )


def check_free(folder: Path, what: str = "--out") -> None:
    """Refuse at once when another live process holds `folder`'s lock (touches nothing)."""
    path = Path(folder) / LOCK_NAME
    if _key(folder) in _HELD or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(folder, what) from None
    finally:
        os.close(fd)  # closing drops the probe's shared lock


def acquire(folder: Path, what: str = "--out") -> None:
    """Hold `folder`'s lock (it must exist) until `release` or exit; refused when a live process holds it."""
    key = _key(folder)
    if key in _HELD:
        return
    path = Path(folder) / LOCK_NAME
    for _ in range(5):  # a holder may unlink the file between our open and our flock: lock the file on disk
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, what) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise _busy(folder, what)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{command_line()}\n".encode())
    _HELD[key] = fd


def release(folder: Path) -> None:
    """Drop `folder`'s lock and its file (unlinked first, so no one locks a file about to go)."""
    fd = _HELD.pop(_key(folder), None)
    if fd is None:
        return
    try:
        (Path(folder) / LOCK_NAME).unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)


def holds(folder: Path) -> bool:
    return _key(folder) in _HELD


def exit_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a scheduler's stop) exit through Python, so the atexit handlers run: the lock
    goes and what --overwrite moved aside is put back. Left alone when the program set its own handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        release(Path(key))
