"""sha256 checksums of the big binary files: an SAE folder's weights, an activation cache's shards,
a training checkpoint. Recorded in the folder's manifest when the file is written and checked when
it is read, so flipped bits (a bad disk, a half copy that kept its size) are an error naming the
file, never a dictionary that silently computes something else. A manifest written before
checksums existed has none, and its files load unchecked.

Cost: one sequential read of the file per open: 0.08 s for a 100 MB file (in the page cache, one
core of the dev machine); the load that follows then reads it from memory. A training checkpoint
records the sha256 of its tensors in its own metadata (a file cannot hold its own hash)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .errors import UserError

BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MB blocks (memory stays small for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str | None, where: str) -> None:
    """Refuse a file whose sha256 is not the `expected` one that `where` (a manifest) recorded;
    `expected` None (a folder written before checksums): nothing to check."""
    if expected is None:
        return
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist ({where} lists it)")
    if not isinstance(expected, str):
        raise UserError(f"{where}: the checksum of {Path(path).name} must be a hex string, got {expected!r}")
    got = file_sha256(path)
    if got != expected:
        raise UserError(
            f"{path} is corrupt: its sha256 {got[:12]}... differs from the {expected[:12]}... recorded in {where} "
            f"(the file changed after it was written: a damaged disk or copy); restore or rebuild it"
        )


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A sha256 of tensors' names, dtypes, shapes and bytes (sorted by name): what a checkpoint records in
    its own metadata, since a file cannot hold the hash of its own bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()
