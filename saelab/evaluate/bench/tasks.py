"""Labelled probing tasks built offline from the embedded corpus's sources (the Python standard
library), each a deterministic function of (tokenizer, seed, size).

Every example is a row of `LENGTH` tokens (BOS + 63 text tokens). Constructions:
  code_vs_prose    (sequence, 2 classes) for functions/classes of stdlib modules with a docstring of at
                   least 200 characters: the docstring (prose) vs the definition's source with the
                   docstring and comment lines removed (code); never both from the same definition.
  stdlib_package   (sequence, 6 classes) 63-token windows of the source of asyncio, email, xml,
                   multiprocessing, unittest, http; lines naming the package are removed first, so the
                   label does not appear in the text (an `import email` line would give it away).
  token_type       (token, 6 classes) the Python `tokenize` type of the source character each model token
                   starts at (first non-space character): keyword, name, number, string, comment, operator.
  inside_string    (token, 2 classes) the token lies inside a string literal after its opening token, vs a
                   code token (name, keyword, number, operator) outside any string.
Sequence-level tasks are mean-pooled over non-sink positions; token-level tasks read one position.
Examples are split into train/test by row (70/30, seed), so no context is shared across the split.

Out of distribution (code_vs_prose, token_type, inside_string): each row also has a family, the part of
the stdlib its file lies in: FIT_FAMILY (a package's folder: asyncio/, email/, ...) or TEST_FAMILY (a
top-level module, Lib/*.py). `Task.ood_split` fits on the first and tests on the second, the shift where
dense probes are reported to beat SAE probes (DeepMind 2025); a test-family row whose tokens equal a
fit-family row's is left out of both sides. stdlib_package has none: its label is the package.
"""

from __future__ import annotations

import ast
import functools
import io
import keyword
import os
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LENGTH = 64
BUILTIN_TASKS = ("code_vs_prose", "stdlib_package", "token_type", "inside_string")
PACKAGES = ("asyncio", "email", "xml", "multiprocessing", "unittest", "http")
TOKEN_CLASSES = ("keyword", "name", "number", "string", "comment", "operator")
FAMILIES = ("packages", "top-level modules")  # family 0 fits the out-of-distribution probe, family 1 tests it
_SKIP = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip"}


@dataclass
class Task:
    name: str
    level: str  # "sequence" | "token"
    classes: list[str]
    description: str
    ids: np.ndarray  # [rows, T] token ids (right-padded with EOS to the longest row)
    lengths: np.ndarray  # [rows] real length of each row
    labels: np.ndarray  # [examples] class index
    rows: np.ndarray  # [examples] which row an example reads
    positions: np.ndarray | None  # [examples] token position (token level), None for sequence level
    train_rows: np.ndarray  # bool [rows]: rows of the training split
    family: np.ndarray | None = None  # [rows] 0 / 1 (FAMILIES), -1: duplicate of a family-0 row; None: no OOD split
    files: np.ndarray | None = None  # [rows] the stdlib file each row comes from (relative path)

    @property
    def train(self) -> np.ndarray:
        """bool [examples]: examples of the training split."""
        return self.train_rows[self.rows]

    def ood_split(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(fit, test) bool [examples] of the out-of-distribution split (FAMILIES); None when the task has none."""
        if self.family is None:
            return None
        fam = self.family[self.rows]
        return fam == 0, fam == 1


def _family(path: Path) -> int:
    return 1 if path.parent == Path(sysconfig.get_paths()["stdlib"]) else 0


def _families(ids: np.ndarray, family: np.ndarray) -> np.ndarray:
    """`family` with test-family rows whose tokens equal a fit-family row's set to -1 (in neither side)."""
    seen = {r.tobytes() for r, f in zip(ids, family) if f == 0}
    return np.array([-1 if f == 1 and r.tobytes() in seen else f for r, f in zip(ids, family)], dtype=np.int64)


def split_rows(n_rows: int, seed: int, train_fraction: float = 0.7) -> np.ndarray:
    perm = np.random.default_rng(seed + 99).permutation(n_rows)
    mask = np.zeros(n_rows, bool)
    mask[perm[: int(round(n_rows * train_fraction))]] = True
    return mask


@functools.lru_cache(maxsize=1)  # one walk of the stdlib per process (slow on a busy disk)
def _stdlib_files() -> tuple[Path, ...]:
    """The stdlib's .py files outside _SKIP, sorted; skipped folders are never walked (site-packages
    and test/ hold most of the files)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return tuple(sorted(out))


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""


def _parsed(p: Path) -> tuple[ast.Module, list[str]] | None:
    """A stdlib file's syntax tree and lines; None for a file that does not parse (or read)."""
    text = _read(p)
    try:
        return ast.parse(text), text.splitlines()
    except (SyntaxError, ValueError):
        return None


def _row(tokenizer, text: str) -> list[int] | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + ids[: LENGTH - 1] if len(ids) >= LENGTH - 1 else None


def _sequence_task(
    name,
    classes,
    description,
    rows_by_class: list[list[list[int]]],
    per_class: int,
    seed: int,
    eos: int,
    files_by_class: list[list[Path]] | None = None,
) -> Task:
    """`files_by_class` (the file of each row) gives the task its out-of-distribution families."""
    rng = np.random.default_rng(seed)
    ids, labels, files = [], [], []
    for c, rows in enumerate(rows_by_class):
        pick = rng.permutation(len(rows))[:per_class]
        ids += [rows[i] for i in pick]
        labels += [c] * len(pick)
        files += [files_by_class[c][i] for i in pick] if files_by_class else []
    arr = np.asarray(ids, dtype=np.int64)
    n = len(arr)
    ood = {}
    if files_by_class:
        fam = _families(arr, np.array([_family(f) for f in files]))
        ood = {"family": fam, "files": np.array([_relative(f) for f in files])}
    return Task(
        name,
        "sequence",
        list(classes),
        description,
        arr,
        np.full(n, arr.shape[1]),
        np.asarray(labels),
        np.arange(n),
        None,
        split_rows(n, seed),
        **ood,
    )


def _relative(path: Path) -> str:
    return str(path.relative_to(sysconfig.get_paths()["stdlib"]))


def code_vs_prose(tokenizer, per_class: int = 300, seed: int = 0) -> Task:
    prose, code, prose_files, code_files = [], [], [], []
    files = _stdlib_files()
    for i in np.random.default_rng(seed).permutation(len(files)):  # files in a seeded order, until enough
        if min(len(prose), len(code)) >= 2 * per_class:
            break
        parsed = _parsed(files[i])
        if parsed is None:
            continue
        tree, lines = parsed
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 200:
                continue
            if (i + node.lineno) % 2:  # each definition gives one side only
                prose.append(doc)
                prose_files.append(files[i])
            else:
                body = node.body[0]
                src = lines[node.lineno - 1 : body.lineno - 1] + lines[body.end_lineno : node.end_lineno]
                code.append("\n".join(ln for ln in src if not ln.strip().startswith("#")))
                code_files.append(files[i])
    kept = [
        [(r, f) for r, f in ((_row(tokenizer, t), f) for t, f in zip(texts, fs)) if r]
        for texts, fs in ((prose, prose_files), (code, code_files))
    ]
    rows = [[r for r, _ in k] for k in kept]
    return _sequence_task(
        "code_vs_prose",
        ["prose", "code"],
        "docstring vs source of stdlib definitions",
        rows,
        per_class,
        seed,
        tokenizer.eos_token_id,
        [[f for _, f in k] for k in kept],
    )


def stdlib_package(tokenizer, per_class: int = 120, seed: int = 0) -> Task:
    root = Path(sysconfig.get_paths()["stdlib"])
    rng = np.random.default_rng(seed)
    rows_by_class, classes = [], []
    for pkg in PACKAGES:
        files = sorted((root / pkg).rglob("*.py"))
        if not files:
            continue
        windows = []
        for fi in rng.permutation(len(files)):  # seeded order, until three times the windows needed
            if len(windows) >= 3 * per_class:
                break
            p = files[fi]
            text = "\n".join(ln for ln in _read(p)[:20000].splitlines() if pkg not in ln.lower())
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for s in range(0, len(ids) - LENGTH, 4 * LENGTH):  # spaced windows: little overlap of contexts
                windows.append([tokenizer.bos_token_id] + ids[s : s + LENGTH - 1])
        rng.shuffle(windows)
        rows_by_class.append(windows[: per_class * 3])
        classes.append(pkg)
    return _sequence_task(
        "stdlib_package",
        classes,
        "which stdlib package a 63-token source window comes from",
        rows_by_class,
        per_class,
        seed,
        tokenizer.eos_token_id,
    )


def _python_spans(text: str) -> list[tuple[int, int, str]]:
    """(start char, end char, class) of each Python token of `text` (classes of TOKEN_CLASSES)."""
    starts = np.cumsum([0] + [len(ln) for ln in text.splitlines(keepends=True)])
    out = []
    fstring = {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, n)}
    try:
        for t in tokenize.generate_tokens(io.StringIO(text).readline):
            if t.type == tokenize.NAME:
                cls = "keyword" if keyword.iskeyword(t.string) else "name"
            elif t.type == tokenize.STRING or t.type in fstring:
                cls = "string"
            else:
                cls = {tokenize.NUMBER: "number", tokenize.COMMENT: "comment", tokenize.OP: "operator"}.get(t.type)
            if cls:
                out.append((int(starts[t.start[0] - 1] + t.start[1]), int(starts[t.end[0] - 1] + t.end[1]), cls))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _token_windows(tokenizer, n_windows: int, seed: int):
    """Windows of stdlib source: (row ids, per position (class, inside-string flag) or None, file)."""
    files = _stdlib_files()
    rng = np.random.default_rng(seed)
    for fi in rng.permutation(len(files)):
        text = _read(files[fi])[:6000]
        spans = _python_spans(text)
        if not spans:
            continue
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        if len(ids) < LENGTH:
            continue
        s0 = int(rng.integers(0, len(ids) - LENGTH + 1))
        starts = np.array([s for s, _, _ in spans])
        info = [None]  # BOS
        for a, b in offs[s0 : s0 + LENGTH - 1]:
            piece = text[a:b]
            first = a + (len(piece) - len(piece.lstrip()))
            j = int(np.searchsorted(starts, first, side="right")) - 1
            if first >= b or j < 0 or not spans[j][0] <= first < spans[j][1]:
                info.append(None)
                continue
            s, e, cls = spans[j]
            info.append((cls, cls == "string" and first > s))
        yield [tokenizer.bos_token_id] + ids[s0 : s0 + LENGTH - 1], info, files[fi]
        n_windows -= 1
        if not n_windows:
            return


def token_tasks(tokenizer, per_class: int = 300, n_windows: int = 160, seed: int = 0) -> list[Task]:
    """token_type and inside_string, from the same windows (one model pass serves both)."""
    windows = list(_token_windows(tokenizer, n_windows, seed))
    ids = np.asarray([w for w, _, _ in windows], dtype=np.int64)
    n = len(ids)
    train = split_rows(n, seed)
    family = _families(ids, np.array([_family(f) for _, _, f in windows]))
    files = np.array([_relative(f) for _, _, f in windows])
    rng = np.random.default_rng(seed)
    cands_type = {c: [] for c in TOKEN_CLASSES}
    cands_str = {0: [], 1: []}
    for r, (_, info, _) in enumerate(windows):
        for pos, item in enumerate(info):
            if item is None:
                continue
            cls, inside = item
            cands_type[cls].append((r, pos))
            if inside:
                cands_str[1].append((r, pos))
            elif cls in ("name", "keyword", "number", "operator"):
                cands_str[0].append((r, pos))

    def build(name, classes, cands, description):
        rows, pos, labels = [], [], []
        for c, key in enumerate(cands):
            pool = cands[key]
            for i in rng.permutation(len(pool))[:per_class]:
                rows.append(pool[i][0])
                pos.append(pool[i][1])
                labels.append(c)
        return Task(
            name,
            "token",
            classes,
            description,
            ids,
            np.full(n, LENGTH),
            np.asarray(labels),
            np.asarray(rows),
            np.asarray(pos),
            train,
            family,
            files,
        )

    return [
        build("token_type", list(TOKEN_CLASSES), cands_type, "Python tokenize type of the current token"),
        build("inside_string", ["code", "in_string"], cands_str, "token inside a string literal vs a code token"),
    ]


def builtin_tasks(tokenizer, seed: int = 0, scale: float = 1.0) -> list[Task]:
    """All built-in tasks; `scale` multiplies the number of examples (tests use a small one)."""
    n = lambda x: max(8, int(x * scale))  # noqa: E731
    return [code_vs_prose(tokenizer, n(300), seed), stdlib_package(tokenizer, n(120), seed)] + token_tasks(
        tokenizer, n(300), max(16, int(160 * scale)), seed
    )
