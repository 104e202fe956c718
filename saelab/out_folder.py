"""The output folder of a run: what kind of run wrote it (and with which settings), then refuse,
replace or resume. Every writer (training, the activation and latent caches, explain, bench, import
/ export) opens its --out here, before any model loads:

    folder = open_out(out, LATENT_CACHE, overwrite=cfg.overwrite, identity=ident)
    if folder.resume: ...        # the same kind of run with the same settings: carry on
    folder.prepare()             # --overwrite: remove what this kind writes (nothing else); mkdir

A kind is recognised by its own files (`RunKind.holds`), so a refusal names what the folder holds:
"holds a training run, not a latent cache" (another kind: refused even with --overwrite, which
never removes another kind's files) versus "holds a latent cache made with other settings" (the
same kind: --overwrite replaces it). Files of no kind we know are left alone by --overwrite."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MANIFEST = "manifest.json"


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
        return list(found)


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


def _sae_folders(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_dir() and (p / "cfg.json").exists()]


TRAINING_RUN = RunKind(
    "training run",
    (MANIFEST, "train_log.jsonl", "train_curves.png", "checkpoint.safetensors", "*/cfg.json", "replacement*"),
    _is_training_run,  # replacement*: a --layers run's replacement.json, and eval's replacement_metrics / plot
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
    (MANIFEST, "explanations.jsonl", "examples.jsonl", "scores_*.jsonl", "report.md", "report.json", "hist_*.png"),
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


def _is_graph(folder: Path) -> bool:
    try:  # circuits/graph.py writes graph.json with this format (out_folder is below circuits: no import)
        return json.loads((folder / "graph.json").read_text()).get("format") == "saelab-graph"
    except (OSError, ValueError, AttributeError):
        return False


# `saelab attribute`: the graph, its Neuronpedia JSON (<slug>.json) and circuit-tracer's index of them
ATTRIBUTION_GRAPH = RunKind("attribution graph", ("graph.safetensors", "*.json"), _is_graph)
# what a folder can hold, the most specific first (a training run's SAE folders are SAE folders too)
KINDS = (
    INTERPRETATION_RUN,
    LATENT_CACHE,
    ACTIVATION_CACHE,
    ATTRIBUTION_GRAPH,
    TRAINING_RUN,
    BENCH_REPORT,
    SAE_FOLDER,
    DASHBOARD,
)


def kind_of(folder: Path) -> RunKind | None:
    """The kind of run a folder holds (None: empty, missing, or files of no kind we know)."""
    return next((k for k in KINDS if k.holds(folder)), None)


def check_writable(path: Path, what: str = "--out") -> None:
    """The output path is a folder (or none yet) under a folder we can write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path")
    parent = next((q for q in (path, *path.parents) if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {parent} is not a writable folder (read-only or no permission)")


def refuse_nonempty(path: Path, overwrite: bool, what: str = "--out", hint: str = "") -> None:
    """A folder with anything in it is replaced only with --overwrite (`hint`: what else the user may do)."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{what} folder {path} already exists and is not empty; pass --overwrite to replace it{hint}")


def refuse_replacing_names(folder: Path, names, overwrite: bool, what: str) -> None:
    """A writer that puts `names` (globs) beside other files replaces none of them without --overwrite."""
    there = [p.name for n in names for p in sorted(Path(folder).glob(n))] if Path(folder).is_dir() else []
    if there and not overwrite:
        raise UserError(
            f"{folder} already holds {', '.join(dict.fromkeys(there))}; pass --overwrite to replace the {what}"
        )


@dataclass
class OutFolder:
    """An output folder that passed `open_out`: `resume` (the same run, carry on) or `replace`
    (--overwrite over this kind's files); neither: a new or empty folder."""

    path: Path
    kind: RunKind
    resume: bool = False
    replace: bool = False
    names: tuple[str, ...] | None = None  # what this run writes, when narrower than the kind's outputs

    def prepare(self) -> Path:
        """Remove what this kind wrote there before (only with --overwrite, only its own files); mkdir."""
        if self.replace and self.path.is_dir():
            for p in self.kind.own_entries(self.path, self.names):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.replace = False
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path


def open_out(
    path, kind: RunKind, overwrite: bool, identity=None, what: str = "--out", names: tuple[str, ...] | None = None
) -> OutFolder:
    """Check an output folder before any work (see the module docstring). `identity`: the settings of
    this run (compared with the manifest's `kind.identity_key`; equal -> resume); `names`: what this run
    writes when narrower than the kind's outputs (a bench of some metrics)."""
    path = Path(path)
    check_writable(path, what)
    folder = OutFolder(path, kind, names=names)
    if not path.exists() or not any(path.iterdir()):
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
    return folder


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name
