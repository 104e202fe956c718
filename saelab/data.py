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

import codecs
import json
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .storage import cache_dir, fingerprint, read_npy, write_npy

BUILTIN = "builtin"
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
SPLIT_SEED = 1234
PIECE_CHARS = 1 << 18  # characters per tokenizer call (~0.1 s): see `pieces`


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
        yield from _utf8_pieces(path)
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{i + 1} is not valid JSON: {e}") from e
                    if not isinstance(rec, dict):
                        raise UserError(
                            f"{path}:{i + 1} holds a JSON {type(rec).__name__}, not an object with a "
                            f"{text_field!r} field (one JSON object per line)"
                        )
                    if text_field not in rec:
                        raise UserError(f"{path}:{i + 1} has no {text_field!r} field (set --text-field)")
                    yield _need_text(rec[text_field], f"{path}:{i + 1}", text_field)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise UserError(f"{path} has no column {text_field!r}; columns: {table.column_names}")
        for i, value in enumerate(table.column(text_field).to_pylist()):
            yield _need_text(value, f"{path} row {i}", text_field)


def _need_text(value, where: str, text_field: str) -> str:
    """A record's text, or a UserError naming the line (a number or a list is not a document)."""
    if not isinstance(value, str):
        raise UserError(f"{where}: field {text_field!r} is a {type(value).__name__} ({str(value)[:40]}), not a string")
    return value


class Continued(str):
    """A piece of a document that goes on in the next text: no EOS after it (see `pieces`)."""


def _cut(text: str) -> int:
    """Where to end a piece of at most PIECE_CHARS: before the last space of its second half (a
    byte-level BPE attaches the space to the next word, so the pieces' tokens are the whole text's),
    else at PIECE_CHARS (a text without spaces)."""
    cut = text.rfind(" ", PIECE_CHARS // 2, PIECE_CHARS)
    return cut if cut > 0 else PIECE_CHARS


def pieces(text: str) -> Iterator[str]:
    """A document in pieces of at most PIECE_CHARS (the last one a plain str, the others `Continued`),
    so one tokenizer call stays short: progress moves and Ctrl-C stops it within a fraction of a second."""
    while len(text) > PIECE_CHARS:
        cut = _cut(text)
        yield Continued(text[:cut])
        text = text[cut:]
    yield text


def _utf8_pieces(path: Path) -> Iterator[str]:
    """A text file read and decoded in pieces (a 20 MB file with no newline is never one string); a
    binary file (NUL bytes, or over 1% of a piece not UTF-8) is refused."""
    replace = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ignore = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    carry = ""
    with open(path, "rb") as f:
        while True:
            data = f.read(PIECE_CHARS)
            text = replace.decode(data, final=not data)
            bad = text.count("\ufffd") - ignore.decode(data, final=not data).count("\ufffd")
            nul = b"\x00" in data
            if nul or bad > 0.01 * max(len(text), 1):
                raise UserError(
                    f"corpus file {path} is not UTF-8 text ({bad} undecodable byte sequence(s)"
                    f"{', NUL bytes' if nul else ''}); is it a binary file?"
                )
            carry += text
            while len(carry) > PIECE_CHARS:
                cut = _cut(carry)
                yield Continued(carry[:cut])
                carry = carry[cut:]
            if not data:
                break
    yield carry


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
    for i, rec in enumerate(ds):
        yield _need_text(rec[text_field], f"{name} record {i}", text_field)


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


def tokenize_stream(
    texts: Iterator[str], tokenizer, context: int, max_rows: int | None = None, progress=None
) -> np.ndarray:
    """Join documents with EOS and cut into rows of `context` tokens (BOS first when it exists).
    Long documents are tokenised in pieces (`pieces`) and each tokenizer call gets at most about
    PIECE_CHARS characters; `progress` (a tqdm bar) advances by the UTF-8 bytes tokenised."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    body = context - (1 if bos is not None else 0)
    rows: list[np.ndarray] = []  # [n, body] blocks
    n_rows = 0
    rest = np.zeros(0, dtype=np.int64)  # tokens not yet in a row
    batch: list[str] = []
    chars = 0

    def flush():
        nonlocal rest, n_rows, chars
        enc = tokenizer(batch, add_special_tokens=False)["input_ids"]
        parts = [rest]
        for text, ids in zip(batch, enc):
            parts.append(np.asarray(ids, dtype=np.int64))
            if eos is not None and not isinstance(text, Continued):
                parts.append(np.array([eos], dtype=np.int64))
        if progress is not None:
            progress.update(sum(len(t.encode("utf-8")) for t in batch))
        batch.clear()
        chars = 0
        ids = np.concatenate(parts)
        n = len(ids) // body
        if n:
            rows.append(ids[: n * body].reshape(n, body))
            n_rows += n
        rest = ids[n * body :]

    for text in texts:
        for piece in pieces(text) if text else ():
            if batch and chars + len(piece) > PIECE_CHARS:
                flush()
            batch.append(piece)
            chars += len(piece)
            if len(batch) >= 64:
                flush()
            if max_rows and n_rows >= max_rows:
                break  # enough rows: the rest of a long document is not tokenised
        if max_rows and n_rows >= max_rows:
            break
    if batch:
        flush()
    if not rows:
        raise UserError("the corpus produced no complete row of tokens: it is empty or shorter than one context")
    arr = np.concatenate(rows)[:max_rows] if max_rows else np.concatenate(rows)
    if bos is not None:
        arr = np.concatenate([np.full((len(arr), 1), bos, dtype=arr.dtype), arr], axis=1)
    return arr.astype(np.int32)


def _progress(source: str):
    """A tokenising progress bar (stderr) for a local corpus of 1 MB or more, or a dataset; else None."""
    from tqdm.auto import tqdm

    p = Path(source)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES] if p.is_dir() else []
    size = sum(f.stat().st_size for f in files) if files else None
    if source == BUILTIN or (size is not None and size < 1 << 20):
        return None
    return tqdm(total=size, unit="B", unit_scale=True, desc=f"tokenising {p.name or source}", file=sys.stderr)


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
            bar = _progress(source)
            try:
                arr = tokenize_stream(source_texts(source, text_field), tokenizer, context, max_rows, bar)
            finally:
                if bar is not None:
                    bar.close()
            write_npy(path, arr)  # atomic; a full disk is one line and leaves no temporary
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
