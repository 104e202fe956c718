"""The output folder of a run: what kind of run wrote it (and with which settings), then refuse,
replace or resume. Every writer (training, the activation and latent caches, explain, bench, import
/ export) opens its --out here, before any model loads:

    folder = open_out(out, LATENT_CACHE, overwrite=cfg.overwrite, identity=ident, inputs=[sae])
    if folder.resume: ...        # the same kind of run with the same settings: carry on
    folder.prepare(); ...; folder.done()   # lock, move aside what --overwrite replaces; the run; completed

open_out only checks (touches nothing): the kind, the settings, `"out": ""`, an input inside what would
be replaced, a live writer's lock, and (`need_bytes`) the free disk space. prepare() takes the folder's
lock (out_lock.py: a second writer is refused with the first one's PID and command), checks again under
it, and moves what --overwrite replaces into `<out>/.replaced-<time>/`, listing it; a run that fails or
is interrupted puts those files back at exit (kill -9: they stay there, and the next open_out says so).

A kind is recognised by its own files (`RunKind.holds`), so a refusal names what the folder holds: "holds a
training run, not a latent cache" (another kind: refused even with --overwrite, which never removes another
kind's files) versus "holds a latent cache made with other settings" (the same kind: --overwrite replaces
it). --overwrite leaves files of no kind we know, and folders no manifest lists (a training run's SAE
folders are the ones its manifest lists)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import out_lock
from .errors import UserError
from .out_space import check_space

MANIFEST = "manifest.json"
REPLACED = ".replaced-"  # <out>/.replaced-<time>-<pid>/: what --overwrite replaces, until the run completes
HIDDEN = (out_lock.LOCK_NAME,)  # our own bookkeeping: never a run's file, never makes a folder "not empty"


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest.json as a dict; None when missing or unreadable (recognition never fails)."""
    try:
        m = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


@dataclass(frozen=True)
class RunKind:
    """One kind of output folder. `outputs`: the names (glob patterns) this kind writes, which is all
    that --overwrite removes; `marker`: folder -> does it hold a run of this kind; `identity_key`: the
    manifest field holding the settings' identity (None: no resume); `shares_folder`: it writes beside
    other files (a report), so only its own names are checked, not the folder."""

    name: str
    outputs: tuple[str, ...]
    marker: Callable[[Path], bool]
    identity_key: str | None = None
    shares_folder: bool = False
    settings: str = "settings"  # "made with other {settings}" when the identity differs
    overwrite_resumes: bool = False  # --overwrite replaces only a run made with other settings (the same: resumed)
    recorded: Callable[[Path], list[str]] | None = None  # folder -> entries its manifest says this kind wrote

    def holds(self, folder: Path) -> bool:
        return Path(folder).is_dir() and self.marker(Path(folder))

    def own_entries(self, folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
        """Entries of `folder` that this kind writes (or those of `names`). A pattern `X/Y` names the
        folders X that hold a Y (`*/cfg.json`: the SAE folders a training run wrote)."""
        found: dict[Path, None] = {}
        for pattern in names or self.outputs:
            head, _, inside = pattern.partition("/")
            hits = sorted(Path(folder).glob(head))
            found.update(dict.fromkeys(p for p in hits if not inside or (p / inside).exists()))
        if self.recorded and names is None:
            found.update(dict.fromkeys(Path(folder) / n for n in self.recorded(Path(folder))))
        return [p for p in found if not _ours(p.name)]


def _ours(name: str) -> bool:
    return name in HIDDEN or name.startswith(REPLACED)


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, our lock file and moved-aside folders left out."""
    return [p for p in Path(folder).iterdir() if not _ours(p.name)] if Path(folder).is_dir() else []


def _manifest_kind(value: str) -> Callable[[Path], bool]:
    return lambda folder: (read_manifest(folder) or {}).get("kind") == value


def _is_training_run(folder: Path) -> bool:
    return (
        (read_manifest(folder) or {}).get("command") == "train"
        or (folder / "checkpoint.safetensors").exists()
        or (folder / "train_log.jsonl").exists()
    )


def _is_latent_cache(folder: Path) -> bool:
    m = read_manifest(folder) or {}
    return "dictionaries" in m and "chunks_done" in m


def _recorded_saes(folder: Path) -> list[str]:
    """The SAE folders a training run's manifest says it wrote (`saes`: name -> folder): the only folders
    --overwrite removes. A folder with a cfg.json that no manifest lists is someone else's: kept."""
    saes = (read_manifest(folder) or {}).get("saes")
    names = saes if isinstance(saes, (dict, list)) else ()
    return [n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


TRAINING_RUN = RunKind(
    "training run",
    (MANIFEST, "train_log.jsonl", "train_curves.png", "checkpoint.safetensors", "replacement*"),
    _is_training_run,  # replacement*: a --layers run's replacement.json, and eval's replacement_metrics / plot
    recorded=_recorded_saes,
)
LATENT_CACHE = RunKind(
    "latent cache",
    (MANIFEST, "tokens.npy", "row_ids.npy", "excluded.npy", "dicts", "chunks"),
    _is_latent_cache,
    identity_key="identity",
    settings="arguments",
)
INTERPRETATION_RUN = RunKind(
    "interpretation run",
    (MANIFEST, "explanations.jsonl", "examples.jsonl", "scores_*.jsonl", "validity_*.jsonl", "report.*", "hist_*.png"),
    _manifest_kind("saelab-interpretation-run"),
    identity_key="identity",
    overwrite_resumes=True,
)
ACTIVATION_CACHE = RunKind(
    "activation cache", (MANIFEST, "shard_*", "truth.safetensors"), _manifest_kind("saelab activation cache")
)
BENCH_REPORT = RunKind(
    "bench report",
    ("*.json", "report.md", "report.html", "bench.png"),
    lambda folder: (folder / "bench.json").exists(),
    shares_folder=True,
)
SAE_FOLDER = RunKind(
    "SAE folder", ("cfg.json", "*.safetensors", "*.json", "*.png"), lambda folder: (folder / "cfg.json").exists()
)
DASHBOARD = RunKind("dashboard", (), _manifest_kind("saelab dashboard"))


def _format_file(name: str, fmt: str) -> Callable[[Path], bool]:
    def marker(folder: Path) -> bool:
        try:  # circuits/graph.py and validate.py write these (out_folder is below circuits: no import)
            return json.loads((folder / name).read_text()).get("format") == fmt
        except (OSError, ValueError, AttributeError):
            return False

    return marker


# `saelab attribute`: the graph, its Neuronpedia JSON (<slug>.json) and circuit-tracer's index of them
ATTRIBUTION_GRAPH = RunKind(
    "attribution graph", ("graph.safetensors", "*.json"), _format_file("graph.json", "saelab-graph")
)
# `saelab attribute --validate-prompts N`: graph predictions vs ablations over N corpus prompts
GRAPH_VALIDATION = RunKind(
    "graph validation", ("validation.json", "validation.png"), _format_file("validation.json", "saelab-validation")
)
# what a folder can hold, the most specific first (a training run's SAE folders are SAE folders too)
KINDS = (
    INTERPRETATION_RUN,
    LATENT_CACHE,
    ACTIVATION_CACHE,
    ATTRIBUTION_GRAPH,
    GRAPH_VALIDATION,
    TRAINING_RUN,
    BENCH_REPORT,
    SAE_FOLDER,
    DASHBOARD,
)


def kind_of(folder: Path) -> RunKind | None:
    """The kind of run a folder holds (None: empty, missing, or files of no kind we know)."""
    return next((k for k in KINDS if k.holds(folder)), None)


def check_writable(path: Path, what: str = "--out") -> None:
    """The output path is a named folder (never `""`, the current folder), or none yet, under a folder we can write."""
    if not str(path).strip() or Path(path).resolve() == Path.cwd().resolve():
        raise UserError(f'{what} is the current folder ("{path}"); name a folder for this run\'s files')
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path")
    parent = next((q for q in (path, *path.parents) if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {parent} is not a writable folder (read-only or no permission)")


def refuse_nonempty(path: Path, overwrite: bool, what: str = "--out", hint: str = "") -> None:
    """A folder with anything in it is replaced only with --overwrite (`hint`: what else the user may do)."""
    path = Path(path)
    if _entries(path) and not overwrite:
        raise UserError(f"{what} folder {path} already exists and is not empty; pass --overwrite to replace it{hint}")


def refuse_replacing_names(folder: Path, names, overwrite: bool, what: str) -> None:
    """A writer that puts `names` (globs) beside other files replaces none of them without --overwrite;
    never while another process writes the folder."""
    there = [p.name for n in names for p in sorted(Path(folder).glob(n))] if Path(folder).is_dir() else []
    if there and not overwrite:
        raise UserError(
            f"{folder} already holds {', '.join(dict.fromkeys(there))}; pass --overwrite to replace the {what}"
        )
    out_lock.check_free(folder)


_PENDING: list[OutFolder] = []  # prepared folders whose run has not completed: restored at exit


@dataclass
class OutFolder:
    """An output folder that passed `open_out`: `resume` (the same run, carry on) or `replace`
    (--overwrite over this kind's files); neither: a new or empty folder. prepare() / done() bracket the run."""

    path: Path
    kind: RunKind
    resume: bool = False
    replace: bool = False
    names: tuple[str, ...] | None = None  # what this run writes, when narrower than the kind's outputs
    overwrite: bool = False
    identity: object = None
    what: str = "--out"
    inputs: tuple = ()
    aside: Path | None = None  # where what --overwrite replaced waits until done()
    moved: list[str] = field(default_factory=list)
    keep: bool = False  # the caller resumes the run there (`train --resume`: its own checks): lock only

    def prepare(self, move_aside: bool = True) -> Path:
        """Lock the folder, check it again under the lock (another run may have written it since open_out),
        move aside what this kind wrote there before (only with --overwrite, only its own files); mkdir.
        `move_aside=False`: lock only (a writer that replaces its files one by one: import, export, pull)."""
        self.path.mkdir(parents=True, exist_ok=True)
        out_lock.acquire(self.path, self.what)
        try:
            args = (self.path, self.kind, self.overwrite, self.identity, self.what, self.names, self.inputs)
            now = self if self.keep else _decide(*args)
            if now.resume != self.resume:
                raise UserError(f"{self.what} {self.path} was changed by another run since the checks; run again")
        except UserError:
            out_lock.release(self.path)
            raise
        entries = self.kind.own_entries(self.path, self.names) if now.replace and move_aside else []
        if entries and not self.moved:
            self.aside = self.path / f"{REPLACED}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            self.aside.mkdir()
            _PENDING.append(self)
            out_lock.exit_on_sigterm()  # a kill (SIGTERM) puts the files back too
            for p in entries:
                os.rename(p, self.aside / p.name)
                self.moved.append(p.name)
            kept = sorted(p.name for p in _entries(self.path))
            print(
                f"saelab: --overwrite replaces {', '.join(self.moved)} in {self.path} (kept in {self.aside.name} "
                f"until this run completes)"
                + (f"; leaves {', '.join(kept)} (not this {self.kind.name}'s)" if kept else ""),
                file=sys.stderr,
                flush=True,
            )
        self.replace = False
        return self.path

    def done(self) -> None:
        """The run completed: delete what it replaced and release the folder."""
        if self in _PENDING:
            _PENDING.remove(self)
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside, self.moved = None, []
        out_lock.release(self.path)

    def restore(self) -> None:
        """The run failed or was interrupted: put back what --overwrite replaced (the new run's files of
        the same names go), or say where it is."""
        if self in _PENDING:
            _PENDING.remove(self)
        if self.aside is None:
            return
        try:
            for name in self.moved:
                new = self.path / name
                if new.is_dir() and not new.is_symlink():
                    shutil.rmtree(new)
                elif new.exists() or new.is_symlink():
                    new.unlink()
                os.rename(self.aside / name, new)
            self.aside.rmdir()
            print(
                f"saelab: the run did not complete; put back in {self.path}: {', '.join(self.moved)}", file=sys.stderr
            )
        except OSError as e:
            print(f"saelab: the run did not complete; the files it replaced are in {self.aside} ({e})", file=sys.stderr)
        self.aside, self.moved = None, []
        out_lock.release(self.path)


def hold(path, what: str = "--out") -> Path:
    """Lock `path` (made if missing) for a writer that checked it with the kindless forms (storage.py:
    refuse_overwrite / refuse_replacing) and writes file by file; finish(path) or exit releases it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    out_lock.acquire(Path(path), what)
    return Path(path)


def finish(path) -> None:
    """The run writing `path` (prepared in this process) completed: OutFolder.done() by the folder's path."""
    for f in [f for f in _PENDING if f.path == Path(path)] or [OutFolder(Path(path), SAE_FOLDER)]:
        f.done()


@atexit.register
def _restore_unfinished() -> None:
    for folder in list(_PENDING):
        folder.restore()


def open_out(
    path,
    kind: RunKind,
    overwrite: bool,
    identity=None,
    what: str = "--out",
    names: tuple[str, ...] | None = None,
    inputs=(),
    need_bytes: int = 0,
    resume: bool = False,
) -> OutFolder:
    """Check an output folder before any work, touching nothing (see the module docstring). `identity`:
    the settings of this run (compared with the manifest's `kind.identity_key`; equal -> resume); `names`:
    what this run writes when narrower than the kind's outputs (a bench of some metrics); `inputs`: the
    folders this run reads (never the --out, never inside what --overwrite replaces); `need_bytes`: the
    estimated size of what it writes (refused when the disk has less free); `resume`: the caller resumes
    the run there (its own checks), so only the lock and the space are checked here."""
    check_writable(path, what)
    path = Path(path)
    if resume:
        folder = OutFolder(path, kind, resume=True, what=what, keep=True)
    else:
        folder = _decide(path, kind, overwrite, identity, what, names, tuple(inputs))
    if path.is_dir():
        out_lock.check_free(path, what)
        stale = sorted(p.name for p in path.glob(REPLACED + "*"))
        if stale:
            print(
                f"saelab: note: {path} holds {', '.join(stale)}: files an earlier --overwrite replaced, left "
                f"there when that run was killed; move them back or delete them",
                file=sys.stderr,
            )
    check_space(path, need_bytes, what)
    return folder


def _decide(path: Path, kind: RunKind, overwrite: bool, identity, what: str, names, inputs) -> OutFolder:
    """Refuse, resume, or replace (open_out's checks; prepare() runs them again under the lock)."""
    folder = OutFolder(path, kind, names=names, overwrite=overwrite, identity=identity, what=what, inputs=inputs)
    if any(Path(i).resolve() == path.resolve() for i in inputs):
        raise UserError(f"{what} {path} is also an input of this run; choose another {what}")
    if not _entries(path):
        return folder
    if kind.shares_folder:  # a report beside other files: only its own files are refused
        refuse_replacing_names(path, names or kind.outputs, overwrite, kind.name)
        return folder  # its files are rewritten one by one; nothing is removed first
    held = kind_of(path)
    if held is not None and held is not kind:
        raise UserError(f"{what} {path} holds {_a(held.name)}, not {_a(kind.name)}; choose another {what}")
    if held is kind and identity is not None and kind.identity_key:
        if (read_manifest(path) or {}).get(kind.identity_key) == identity and (kind.overwrite_resumes or not overwrite):
            folder.resume = True
            return folder
        if not overwrite:
            raise UserError(
                f"{path} holds {_a(kind.name)} made with other {kind.settings}; pass --overwrite to "
                f"replace it, or choose another {what}"
            )
    refuse_nonempty(path, overwrite, what, " (or --resume to continue a run)" if kind is TRAINING_RUN else "")
    folder.replace = True
    for entry in kind.own_entries(path, names):  # an SAE folder read by this run is never replaced
        e = entry.resolve()
        for i in inputs:
            if e == Path(i).resolve() or e in Path(i).resolve().parents:
                raise UserError(
                    f"--overwrite would replace {entry.name} in {path}, which holds the input {i}; "
                    f"choose another {what}"
                )
    return folder


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name
