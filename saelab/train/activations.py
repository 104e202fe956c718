"""Activations for training: LM forward (stopped after the deepest hookpoint) -> shuffled chunks.

A chunk is `buffer_batches` LM batches. Its valid positions (sinks/outliers excluded) from every
hookpoint are concatenated, shuffled with a generator seeded by (seed, chunk index) and cut into
optimiser batches. Chunk c always holds the same rows in the same order, so a resumed run sees
exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..data import TokenRows
from ..models import collect_activations
from ..sinks import SinkConfig, excluded_positions


@dataclass
class Chunk:
    index: int
    acts: dict[str, torch.Tensor]   # hookpoint -> [valid tokens, d], already shuffled
    lm_tokens: int                  # LM positions consumed (valid + excluded)
    excluded: int                   # positions left out as sinks/outliers


def row_order(n_rows: int, needed: int, seed: int) -> np.ndarray:
    """Training rows in visiting order: fresh permutations, repeated only if the corpus runs out."""
    rng = np.random.default_rng(seed)
    reps = -(-needed // n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(reps)])[:needed]


class ActivationStream:
    def __init__(self, model, rows: TokenRows, hookpoints: list[str], context: int, batch_tokens: int,
                 buffer_batches: int, total_tokens: int, seed: int, sink: SinkConfig, special: list[int],
                 device: str = "cpu"):
        self.model, self.rows, self.hookpoints = model, rows, hookpoints
        self.rows_per_batch = max(1, batch_tokens // context)
        self.rows_per_chunk = self.rows_per_batch * buffer_batches
        n_rows_needed = -(-total_tokens // context)
        self.n_chunks = -(-n_rows_needed // self.rows_per_chunk)
        train = rows.train_rows
        self.order = train[row_order(len(train), self.n_chunks * self.rows_per_chunk, seed)]
        self.epochs = len(self.order) / max(1, len(train))
        self.seed, self.sink, self.special, self.device = seed, sink, special, device

    @torch.no_grad()
    def chunk(self, c: int) -> Chunk:
        sel = self.order[c * self.rows_per_chunk:(c + 1) * self.rows_per_chunk]
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hookpoints}
        lm_tokens = excluded = 0
        for i in range(0, len(sel), self.rows_per_batch):
            ids = torch.from_numpy(np.asarray(self.rows.tokens[np.sort(sel[i:i + self.rows_per_batch])], dtype=np.int64)).to(self.device)
            acts = collect_activations(self.model, ids, self.hookpoints)
            drop = excluded_positions(list(acts.values()), ids, self.sink, self.special)
            keep = ~drop
            for h, a in acts.items():
                parts[h].append(a[keep].float())
            lm_tokens += ids.numel()
            excluded += int(drop.sum())
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        n = sum(p.shape[0] for p in parts[self.hookpoints[0]])
        perm = torch.randperm(n, generator=g).to(self.device)
        return Chunk(c, {h: torch.cat(p)[perm] for h, p in parts.items()}, lm_tokens, excluded)

    def chunks(self, start: int = 0) -> Iterator[Chunk]:
        for c in range(start, self.n_chunks):
            yield self.chunk(c)
