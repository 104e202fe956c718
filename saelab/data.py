"""Text -> fixed-length token rows, cached on disk and memory-mapped.

Sources: the built-in offline corpus (`builtin`: Python standard library source and docstrings,
`pydoc_data` topics), local `.txt`/`.jsonl`/`.parquet` files or folders of them, a Hugging Face
dataset name (`hf:NAME[:CONFIG]`, or any name that is not a local path), or an already tokenised
`.npy` of ids shaped [rows, context] (used as is, no BOS added).

Rows are a deterministic function of (source, tokenizer, context): documents are joined with
the EOS token and cut into rows; each row starts with BOS when the tokenizer has one. The split
into train and held-out rows is a fixed permutation, the same for every run and seed.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .storage import cache_dir, fingerprint, read_npy

BUILTIN = "builtin"
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
SPLIT_SEED = 1234


@dataclass
class TokenRows:
    """Token ids [rows, context] (a read-only memmap) with the rows of each split."""

    tokens: np.ndarray
    train_rows: np.ndarray
    heldout_rows: np.ndarray
    fingerprint: str
    source: str

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train_rows, "heldout": self.heldout_rows}[name]


def builtin_texts() -> Iterator[str]:
    """The offline corpus: pydoc topics (English prose), then stdlib modules' source, sorted."""
    from pydoc_data import topics

    for key in sorted(topics.topics):
        yield topics.topics[key]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip & set(path.relative_to(stdlib).parts):
            continue
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def _file_texts(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix in (".txt", ".md"):
        yield _utf8_text(path)
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{i + 1} is not valid JSON: {e}") from e
                    if text_field not in rec:
                        raise UserError(f"{path}:{i + 1} has no {text_field!r} field (set --text-field)")
                    yield rec[text_field]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise UserError(f"{path} has no column {text_field!r}; columns: {table.column_names}")
        yield from table.column(text_field).to_pylist()


def _utf8_text(path: Path) -> str:
    """A text file's contents; a binary file (NUL bytes, or over 1% of it not UTF-8) is refused."""
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    nul = b"\x00" in data
    if nul or bad > 0.01 * max(len(text), 1):
        raise UserError(
            f"corpus file {path} is not UTF-8 text ({bad} undecodable byte sequence(s)"
            f"{', NUL bytes' if nul else ''}); is it a binary file?"
        )
    return text


def _open_rows(path: Path) -> np.ndarray:
    """A token-row .npy as a read-only memmap; a truncated or damaged file is a UserError."""
    tokens = read_npy(path)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise UserError(f"{path} must hold integer token ids shaped [rows, context], got {tokens.dtype} {tokens.shape}")
    return tokens


def tokenizer_id(tokenizer) -> str:
    """What a tokenizer does, not where it lives: moving the cache (the embedded model's folder)
    keeps the token cache valid."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return fingerprint(type(tokenizer).__name__, spec, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))


def _hf_texts(name: str, text_field: str, split: str = "train") -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise UserError("loading a Hugging Face dataset needs `pip install datasets`") from e
    # hf:NAME, hf:NAME:CONFIG, or hf:/local/dataset/folder (same code path, no hub needed)
    name = name.removeprefix("hf:")
    path, _, config = (name, "", "") if Path(name).exists() else name.partition(":")
    ds = datasets.load_dataset(path, config or None, split=split, streaming=True)
    for rec in ds:
        yield rec[text_field]


def source_texts(source: str, text_field: str = "text") -> Iterator[str]:
    if source == BUILTIN:
        yield from builtin_texts()
        return
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES)
        if not files:
            raise UserError(f"folder {p} holds no {'/'.join(TEXT_SUFFIXES)} files")
        for f in files:
            yield from _file_texts(f, text_field)
    elif p.exists():
        if p.suffix not in TEXT_SUFFIXES:
            raise UserError(f"{p}: unsupported file type {p.suffix!r}; use {', '.join(TEXT_SUFFIXES)} or .npy")
        yield from _file_texts(p, text_field)
    elif source.startswith("hf:") or ("/" in source and not source.startswith((".", "/"))):
        yield from _hf_texts(source, text_field)
    else:
        raise UserError(f"corpus {source!r} is not a file, a folder, `builtin`, or a dataset name (hf:NAME)")


def tokenize_stream(texts: Iterator[str], tokenizer, context: int, max_rows: int | None = None) -> np.ndarray:
    """Join documents with EOS and cut into rows of `context` tokens (BOS first when it exists)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    body = context - (1 if bos is not None else 0)
    rows: list[np.ndarray] = []
    buf: list[int] = []
    batch: list[str] = []

    def flush():
        enc = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in enc:
            buf.extend(ids)
            if eos is not None:
                buf.append(eos)
        batch.clear()
        while len(buf) >= body:
            row = buf[:body]
            del buf[:body]
            rows.append(np.asarray(([bos] if bos is not None else []) + row, dtype=np.int32))

    for text in texts:
        if text:
            batch.append(text)
        if len(batch) >= 64:
            flush()
            if max_rows and len(rows) >= max_rows:
                break
    if batch:
        flush()
    if not rows:
        raise UserError("the corpus produced no complete row of tokens: it is empty or shorter than one context")
    arr = np.stack(rows[:max_rows] if max_rows else rows)
    return arr


def check_source(source: str) -> None:
    """Cheap checks of a corpus before any model loads: it exists and is not empty."""
    if source == BUILTIN or source.startswith("hf:"):
        return
    p = Path(source)
    if p.is_file() and p.stat().st_size == 0:
        raise UserError(f"corpus {p} is empty")
    if p.is_dir() and not any(f.suffix in TEXT_SUFFIXES and f.stat().st_size for f in p.rglob("*")):
        raise UserError(f"corpus folder {p} holds no non-empty {'/'.join(TEXT_SUFFIXES)} files")
    if not p.exists() and (source.startswith((".", "/")) or p.suffix in TEXT_SUFFIXES + (".npy",)):
        raise UserError(f"corpus {source!r} does not exist")


def _split(n_rows: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_rows)
    n_held = max(1, int(round(n_rows * heldout_fraction))) if n_rows > 1 else 0
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def load_token_rows(
    source: str,
    tokenizer=None,
    context: int = 256,
    heldout_fraction: float = 0.05,
    text_field: str = "text",
    max_rows: int | None = None,
    vocab_size: int | None = None,
) -> TokenRows:
    """Token rows for `source`, tokenised once and memory-mapped from the cache afterwards."""
    if source.endswith(".npy"):
        p = Path(source)
        if not p.exists():
            raise UserError(f"token file {p} does not exist")
        tokens = _open_rows(p)
        if tokens.shape[1] != context:
            raise UserError(f"{p} has rows of {tokens.shape[1]} tokens but --context is {context}")
        if not tokens.size:
            raise UserError(f"{p} holds no token rows")
        if int(tokens.min()) < 0:
            raise UserError(f"{p} holds token id {int(tokens.min())}; token ids must be >= 0")
        if vocab_size is not None and int(tokens.max()) >= vocab_size:
            raise UserError(f"{p} holds token id {int(tokens.max())}, outside the model's vocabulary of {vocab_size}")
        fp = fingerprint("npy", str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
    else:
        if tokenizer is None:
            raise UserError("tokenising text needs a tokenizer")
        fp = fingerprint("text", source, tokenizer_id(tokenizer), context, text_field, max_rows, _source_stamp(source))
        path = cache_dir() / "tokens" / f"{fp}.npy"
        if path.exists():
            try:
                tokens = _open_rows(path)
            except UserError as e:  # a damaged cache file (disk full, copied half): rebuild it
                warnings.warn(f"{e}; re-tokenising", stacklevel=2)
                path.unlink()
        if not path.exists():
            arr = tokenize_stream(source_texts(source, text_field), tokenizer, context, max_rows)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{np.random.randint(1 << 30)}.npy")
            np.save(tmp, arr)
            tmp.replace(path)
        tokens = _open_rows(path)
    train, held = _split(len(tokens), heldout_fraction)
    return TokenRows(tokens, train, held, fp, source)


def _source_stamp(source: str):
    """Changes when a local source changes, so a stale token cache is never reused."""
    if source == BUILTIN:
        return sys.version
    p = Path(source)
    if p.is_file():
        return [p.stat().st_size, p.stat().st_mtime_ns]
    if p.is_dir():
        return sorted(
            (str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES
        )
    return None
