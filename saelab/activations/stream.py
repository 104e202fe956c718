"""Activations from the LM: forward (stopped after the deepest hookpoint) -> shuffled chunks.

A chunk is `buffer_batches` LM batches. Its valid positions (sinks/outliers excluded) from every
hookpoint are concatenated, shuffled with a generator seeded by (seed, chunk index) and cut into
optimiser batches by the training source. Chunk c always holds the same rows in the same order,
so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..data import TokenRows
from ..models import collect_activations, hookpoint_widths
from ..sinks import SinkConfig, excluded_positions


@dataclass
class Chunk:
    index: int
    acts: dict[str, torch.Tensor]  # hookpoint -> [valid tokens, d], already shuffled
    lm_tokens: int  # LM positions consumed (valid + excluded)
    excluded: int  # positions left out as sinks/outliers


def lm_rows_for(tokens: int, batch_tokens: int, context: int) -> tuple[int, int]:
    """(rows per LM batch, LM rows of the run): a token budget is a contract, so it is rounded
    down to whole LM batches of `batch_tokens // context` rows, never up to whole chunks."""
    rows_per_batch = max(1, batch_tokens // context)
    return rows_per_batch, (tokens // (rows_per_batch * context)) * rows_per_batch


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """Host -> device. On CUDA the copy goes through pinned (page-locked) memory and is asynchronous,
    so it overlaps the GPU's queued work instead of stalling it; on the CPU it is a no-op."""
    if str(device).startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def row_order(n_rows: int, needed: int, seed: int) -> np.ndarray:
    """Training rows in visiting order: fresh permutations, repeated only if the corpus runs out."""
    rng = np.random.default_rng(seed)
    reps = -(-needed // n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(reps)])[:needed]


class ActivationStream:
    def __init__(
        self,
        model,
        rows: TokenRows,
        hookpoints: list[str],
        context: int,
        rows_per_batch: int,
        buffer_batches: int,
        n_rows: int,
        seed: int,
        sink: SinkConfig,
        special: list[int],
        device: str = "cpu",
        lm_rows: int | None = None,
    ):
        self.model, self.rows, self.hookpoints, self.context = model, rows, hookpoints, context
        self.rows_per_batch = rows_per_batch
        self.rows_per_chunk = rows_per_batch * buffer_batches
        # rows per LM forward (--lm-batch-tokens): a whole number of SAE batches, so a GPU runs the LM on
        # large batches while the chunk's data stays what SAE-sized forwards give (see lm_batches/forward)
        self.lm_rows = min(max(1, (lm_rows or rows_per_batch) // rows_per_batch) * rows_per_batch, self.rows_per_chunk)
        self.n_chunks = -(-n_rows // self.rows_per_chunk)
        train = rows.train_rows
        self.order = train[row_order(len(train), n_rows, seed)]
        self.total_lm_tokens = n_rows * context
        self.epochs = n_rows / max(1, len(train))
        self.seed, self.sink, self.special, self.device = seed, sink, special, device
        self.widths = hookpoint_widths(model, hookpoints)

    def lm_tokens_before(self, c: int) -> int:
        return c * self.rows_per_chunk * self.context

    def lm_batches(self, c: int) -> list[np.ndarray]:
        """Chunk c's rows in LM batches of `lm_rows`. Rows are sorted within each SAE-batch group (sorted
        reads of the token array), whatever the LM batch, so the chunk's order never depends on it."""
        sel = self.order[c * self.rows_per_chunk : (c + 1) * self.rows_per_chunk]
        rpb = self.rows_per_batch
        rows = np.concatenate([np.sort(sel[j : j + rpb]) for j in range(0, len(sel), rpb)])
        return [rows[i : i + self.lm_rows] for i in range(0, len(rows), self.lm_rows)]

    def forward(self, rows: np.ndarray) -> tuple[dict[str, torch.Tensor], int, int]:
        """One LM batch -> (valid float32 activations per hookpoint, LM tokens, excluded positions). The
        outlier threshold (a median norm) is taken per SAE-batch group of rows, as unbatched training does."""
        ids = to_device(torch.from_numpy(np.asarray(self.rows.tokens[rows], dtype=np.int64)), self.device)
        acts = collect_activations(self.model, ids, self.hookpoints)
        rpb = self.rows_per_batch
        drop = torch.cat(
            [
                excluded_positions([a[g : g + rpb] for a in acts.values()], ids[g : g + rpb], self.sink, self.special)
                for g in range(0, ids.shape[0], rpb)
            ]
        )
        return {h: a[~drop].float() for h, a in acts.items()}, ids.numel(), int(drop.sum())

    def shuffled(self, c: int, acts: dict[str, torch.Tensor], lm_tokens: int, excluded: int) -> Chunk:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        n = next(iter(acts.values())).shape[0]
        perm = torch.randperm(n, generator=g).to(self.device)
        return Chunk(c, {h: a[perm] for h, a in acts.items()}, lm_tokens, excluded)

    @torch.no_grad()
    def chunk(self, c: int) -> Chunk:
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hookpoints}
        lm_tokens = excluded = 0
        for rows in self.lm_batches(c):
            acts, n, ex = self.forward(rows)
            for h, a in acts.items():
                parts[h].append(a)
            lm_tokens += n
            excluded += ex
        return self.shuffled(c, {h: torch.cat(p) for h, p in parts.items()}, lm_tokens, excluded)

    def chunks(self, start: int = 0) -> Iterator[Chunk]:
        for c in range(start, self.n_chunks):
            yield self.chunk(c)
