"""The few points where a dictionary reduces over latents or over the batch, behind one object.

A dictionary computes every such reduction through `self.reductions`: `Local` (one process, every
method returns its input, so the single-process step is the same ops in the same order) unless
parallel training gives it another. The torch.distributed versions live in train/:

  over latents  (latent-sharded training, train/sharded_saes.py: each rank holds a slice of the latents)
    row_topk      each row's k largest scores                               TopK's code, AuxK's dead latents
    latent_total  a count over the latents                                  AuxK's dead latents
    latent_sum    the sum of partial decodes (autograd into this slice's)   decode, AuxK, Matryoshka prefixes
    shared        a replicated parameter's direct term (it counts once)     b_dec in the reconstruction
    replicate     make replicated tensors the same on every rank            scales and b_dec after the init
    offset        the global id of this slice's first latent                Matryoshka's groups
  over the batch  (data-parallel training, train/row_split.py: each rank holds a share of the rows;
                   latent sharding too: a batch-wide ranking spans every latent)
    batch_rows    the batch's row count                                     BatchTopK's k x rows
    top_values    the n largest of a flat set of values                     BatchTopK's threshold
    min           the smallest value                                        BatchTopK's running threshold
    any           a flag true anywhere (a step every rank then takes)       BatchTopK's refinement, AuxK

A new dictionary type that calls these at its reductions trains under `--distributed data` and
(if its sparsity is such a top-k) `--distributed latents` without a copy of its forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .latents import Latents, latents_of


class Pick(NamedTuple):
    """Entries chosen in each row of a [rows, d] score matrix: `cols` [rows, k] when every row holds
    exactly k (one process), else flat (rows, cols) in row-major order (a latent slice's share)."""

    cols: torch.Tensor  # [rows, k] or [nnz]
    rows: torch.Tensor | None  # None: k per row; else [nnz], ascending

    def row_ids(self) -> torch.Tensor:
        """[nnz] the row of every entry."""
        if self.rows is not None:
            return self.rows
        n, k = self.cols.shape
        return torch.arange(n, device=self.cols.device).repeat_interleave(k)

    def take(self, scores: torch.Tensor) -> torch.Tensor:
        """The chosen entries of `scores` (no autograd needed), shaped like `cols`."""
        return scores.gather(1, self.cols) if self.rows is None else scores[self.rows, self.cols]

    def latents(self, values: torch.Tensor, cols: torch.Tensor, n_rows: int, d_sae: int) -> Latents:
        """Latents of the chosen entries' values, under latent ids `cols` (shaped like `self.cols`)."""
        if self.rows is None:
            k = self.cols.shape[1]
            return Latents(values.view(-1, k), cols.view(-1, k), None, n_rows, d_sae)
        return latents_of(values.reshape(-1), self.rows, cols.reshape(-1), n_rows, d_sae)

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """1 at the chosen entries of a [rows, d] matrix, 0 elsewhere."""
        if self.rows is None:
            return torch.zeros_like(like).scatter_(1, self.cols, 1.0)
        return torch.zeros_like(like).index_put_((self.rows, self.cols), like.new_ones(()))


class Local:
    """One process: the dictionary holds every latent and every row; each reduction is its input.
    The parallel versions subclass it and override the reductions over the axis they split."""

    offset = 0

    # ------------------------------------------------------------ over latents
    def row_topk(self, scores: torch.Tensor, k: int) -> Pick:
        """Each row's k largest `scores` [rows, d] (k <= d), in no particular order within a row."""
        return Pick(scores.topk(k, dim=-1, sorted=False).indices, None)

    def latent_total(self, n: int) -> int:
        return n

    def latent_sum(self, partial: torch.Tensor) -> torch.Tensor:
        return partial

    def shared(self, param: torch.Tensor) -> torch.Tensor:
        return param

    def replicate(self, *tensors: torch.Tensor) -> None:
        pass

    # ------------------------------------------------------------ over the batch
    def batch_rows(self, n: int) -> int:
        return n

    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        return flat.topk(min(n, flat.numel()), sorted=False).values

    def min(self, lo: torch.Tensor) -> torch.Tensor:
        return lo

    def any(self, flag: bool) -> bool:
        return flag


LOCAL = Local()
