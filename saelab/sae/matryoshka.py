"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries.

The latents are split into consecutive groups (`SaeConfig.groups`, sizes summing to d_sae). Every
prefix (groups 0..g) must reconstruct the target on its own: the training loss is the sum over
prefixes of their FVU (the full dictionary's FVU is the objective's own term; `extra_loss` adds the
shorter prefixes). Early latents are thus pushed to general features, later ones to refinements,
which reduces feature absorption and splitting at the same L0.

Latent selection is BatchTopK over the whole dictionary (k x rows per batch); inference is the
same single threshold, so the saved form is BatchTopK's (a JumpReLU with one shared threshold,
how SAELens loads it). The groups matter for training only; they are kept in cfg.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..options import opt
from .base import SaeConfig
from .batchtopk import BatchTopKSae
from .kind import LOCAL_ONLY, Capabilities, ForeignNames, TypeOptions
from .latents import Latents, decode_sparse


def default_groups(d_sae: int) -> list[int]:
    """Prefix boundaries at d_sae/4, /2 and d_sae (at least one latent per group).

    Three prefixes, not five (/16 and /8 too, the first default): on layer 6 of the embedded model
    (4,608 latents, k = 32, 1M tokens) five cost +16.5% FVU over BatchTopK and three +9.0%, and on
    planted parent/child features three absorbed less than five (docs/research/dictionaries.md)."""
    bounds = sorted({max(1, d_sae // 2**i) for i in range(2, -1, -1)})
    return [b - a for a, b in zip([0] + bounds[:-1], bounds)]


@dataclass
class MatryoshkaOptions(TypeOptions):
    groups: list[int] | None = opt(
        None, "matryoshka: latent group sizes, summing to --dict-size (none: prefixes at latents/4, /2, 1)"
    )

    def check(self, run) -> None:
        if self.groups is None:
            return
        if not self.groups or any(g < 1 for g in self.groups):
            raise UserError("--groups needs positive group sizes")
        if sum(self.groups) != run.latents:
            raise UserError(
                f"--groups {' '.join(map(str, self.groups))} sum to {sum(self.groups)}, not --dict-size {run.latents}"
            )

    def sae_fields(self, fresh: bool) -> dict:
        return {"groups": list(self.groups) if self.groups else None} if fresh else {}

    @staticmethod
    def recorded(sae_cfg) -> dict:
        return {"groups": list(sae_cfg.groups) if sae_cfg.groups else None}


class MatryoshkaSae(BatchTopKSae):
    Options = MatryoshkaOptions
    # the prefix losses are reconstructions of the target: local only
    capabilities = Capabilities(uses_k=True, losses=LOCAL_ONLY, torchrun=("data", "modules", "latents"))
    foreign = ForeignNames(saelens="jumprelu")  # its inference form is BatchTopK's

    def __init__(self, cfg: SaeConfig):
        super().__init__(cfg)
        groups = cfg.groups or default_groups(cfg.d_sae)
        if sum(groups) != cfg.d_sae or min(groups) < 1:
            raise ValueError(f"matryoshka groups {groups} must be positive and sum to d_sae={cfg.d_sae}")
        cfg.groups = list(groups)
        self.register_buffer("bounds", torch.tensor(groups).cumsum(0), persistent=False)

    def prefix_recons(self, lat: Latents) -> list[torch.Tensor]:
        """Reconstruction by each proper prefix (groups 0..g, g < last), in the training space."""
        r = self.reductions  # a latent slice: its latents' global groups, its part of each prefix summed
        parts = r.latent_sum(group_decodes(lat, self.W_dec, self.bounds, len(self.bounds) - 1, r.offset))
        out, acc = [], r.shared(self.b_dec).expand(lat.n_rows, -1)
        for part in parts.unbind(1):  # b_dec + group 0, + group 1, ...: the sums of a masked decode per prefix
            acc = acc + part
            out.append(acc)
        return out

    def extra_loss(self, x_in, lat, recon, target):
        """Sum of the FVUs of every proper prefix (the full dictionary's is the objective's)."""
        if len(self.bounds) < 2:
            return recon.new_zeros(())
        denom = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
        return sum((r - target).pow(2).sum() for r in self.prefix_recons(lat)) / denom


def group_decodes(
    lat: Latents, W_dec: torch.Tensor, bounds: torch.Tensor, n_groups: int, offset: int = 0
) -> torch.Tensor:
    """[rows, n_groups, d_out]: each row's decode by the latents of each of the first n_groups groups
    (`bounds`: the groups' cumulative ends in global ids; latent i has global id i + offset).

    One embedding_bag with a bag per (row, group) over the entries of those groups: the work of one
    decode of those entries, where a masked decode per group costs a full decode each. Entries in
    row-major, column-ascending order (BatchTopK's) are already grouped; others are sorted first."""
    rows, idx, vals = lat.flat()
    group = torch.bucketize(idx + offset, bounds, right=True)
    sel = group < n_groups
    rows, idx, vals, group = rows[sel], idx[sel], vals[sel], group[sel]
    bag = rows * n_groups + group
    if bag.numel() > 1 and bool((bag[1:] < bag[:-1]).any()):
        bag, order = bag.sort(stable=True)
        idx, vals = idx[order], vals[order]
    counts = torch.bincount(bag, minlength=lat.n_rows * n_groups)
    bags = Latents(vals, idx, torch.cumsum(counts, 0) - counts, lat.n_rows * n_groups, lat.d_sae)
    return decode_sparse(bags, W_dec).view(lat.n_rows, n_groups, -1)
