"""Attention-sink and outlier positions: found, left out of training, kept clean when splicing.

Most LMs write a massive activation into the first position of every sequence (SmolLM2 after
layer 6: residual norm ~840 against a median ~105). Training an SAE through it wastes capacity
on one direction, and splicing its reconstruction there breaks attention for every later token.
A position is excluded when any of these holds (each rule can be switched off):
  - it is among the first `first_positions` of the row,
  - its token is a special token (BOS/EOS/pad) and `mask_special` is on,
  - its activation norm exceeds `norm_factor` x the median norm of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SinkConfig:
    first_positions: int = 1  # positions at the start of each row that are always excluded
    mask_special: bool = True  # exclude BOS/EOS/pad tokens
    norm_factor: float = 5.0  # exclude positions with norm > factor x median (0 = off)

    @classmethod
    def off(cls) -> SinkConfig:
        return cls(first_positions=0, mask_special=False, norm_factor=0.0)


def special_ids(tokenizer) -> list[int]:
    if tokenizer is None:
        return []
    ids = {getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return sorted(i for i in ids if i is not None)


def excluded_positions(
    acts: list[torch.Tensor], input_ids: torch.Tensor, cfg: SinkConfig, special: list[int]
) -> torch.Tensor:
    """Bool [batch, seq], True where a position is a sink/outlier in any of the given activations."""
    b, t = input_ids.shape
    mask = torch.zeros(b, t, dtype=torch.bool, device=input_ids.device)
    if cfg.first_positions:
        mask[:, : cfg.first_positions] = True
    if cfg.mask_special and special:
        mask |= torch.isin(input_ids, torch.tensor(special, device=input_ids.device))
    if cfg.norm_factor > 0:
        for a in acts:
            norms = torch.linalg.vector_norm(a, dim=-1, dtype=torch.float32)  # half-precision models too
            mask |= norms > cfg.norm_factor * norms.median()
    return mask
