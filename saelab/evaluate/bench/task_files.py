"""A user's probing task: a JSONL file of {"text": ..., "label": ...} records (sequence level).

Checked before any model loads: valid JSON, both fields present, at least two classes with at least
MIN_PER_CLASS examples each. Labels must be a property of the text that the text does not spell out:
when a class's label string appears verbatim in most of its texts (LEAK_FRACTION), a probe would learn
to read the label word rather than the concept, and the file is refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import UserError
from .tasks import Task, split_rows

MIN_PER_CLASS = 4
LEAK_FRACTION = 0.5
MAX_TOKENS = 128


def read_task_file(path: str | Path) -> tuple[list[str], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tasks {path}: no such file")
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"--tasks {path}:{i} is not valid JSON: {e}") from None
            if not isinstance(rec, dict) or "text" not in rec or "label" not in rec:
                raise UserError(f'--tasks {path}:{i}: each line needs a "text" and a "label" field')
            if not isinstance(rec["text"], str) or not rec["text"].strip():
                raise UserError(f'--tasks {path}:{i}: "text" must be a non-empty string')
            texts.append(rec["text"])
            labels.append(str(rec["label"]))
    counts = Counter(labels)
    if len(counts) < 2:
        raise UserError(
            f"--tasks {path}: a probing task needs at least two classes; found only {next(iter(counts), 'none')!r}"
        )
    small = [c for c, n in counts.items() if n < MIN_PER_CLASS]
    if small:
        raise UserError(
            f"--tasks {path}: class(es) {', '.join(map(repr, small))} have fewer than {MIN_PER_CLASS} "
            f"examples (a train/test split needs more)"
        )
    for c in counts:
        if len(c) >= 2:
            hits = sum(c.lower() in t.lower() for t, lab in zip(texts, labels) if lab == c)
            if hits >= LEAK_FRACTION * counts[c]:
                raise UserError(
                    f"--tasks {path}: the label {c!r} appears verbatim in {hits} of its {counts[c]} texts; "
                    f"the probe would read the label from the text. Remove it from the texts"
                )
    return texts, labels


def file_task(tokenizer, path: str | Path, texts: list[str], labels: list[str], seed: int = 0) -> Task:
    """Rows [BOS + up to MAX_TOKENS tokens], right-padded with EOS (a causal model never reads the padding)."""
    classes = sorted(set(labels))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [bos + tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for t in texts]
    width = max(map(len, rows))
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    n = len(rows)
    return Task(
        f"file:{Path(path).stem}",
        "sequence",
        classes,
        f"user task from {path}",
        ids,
        np.array([len(r) for r in rows]),
        np.array([classes.index(c) for c in labels]),
        np.arange(n),
        None,
        split_rows(n, seed),
    )
