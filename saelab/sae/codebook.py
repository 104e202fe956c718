"""Codebook features (Tamkin et al. 2023, "Codebook Features: Sparse and Discrete Interpretability
for Neural Networks"): a discrete bottleneck.

The dictionary is a codebook of d_sae code vectors (stored as W_dec [d_sae, d_in]). A position's
code set is the k codes with the highest cosine similarity to its activation; every chosen code's
activation is exactly 1, and the output is the sum of the chosen codes (no magnitudes):

    sim_j = cos(x - b_dec, c_j),   S = top-k_j sim_j,   x_hat = b_dec + sum_{j in S} c_j

The bias b_dec is our addition to the paper's form (it has none): a residual stream carries a large
shared mean direction, which without a bias every code set would have to spend codes on; with it
the codes model the deviation from the centre (the same centring every saelab SAE applies), and the
similarity is taken to the centred activation. The selection passes no gradient (the LM is frozen
here, so there is nothing upstream to train); the reconstruction's (or the e2e KL's) gradient
reaches the chosen codes and the bias directly, as in the paper.

Codes have no unit-norm constraint: their norm is their contribution. They start at the typical
centred-input norm / sqrt(k) (k orthogonal such codes sum to a typical input). A dead code (unused
for `--dead-tokens`) is pulled towards the residual of the rows it is most similar to (the AuxK
idea of Gao et al. 2024 with activation 1), so it can win a place in their code sets.

Saved as any SAE folder: W_dec holds the codes, W_enc their unit directions (transposed; what the
selection compares with), b_enc zeros. SAELens and sparsify have no such type: export is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .base import SaeConfig, SparseCoder
from .kind import Capabilities, ForeignNames, TypeOptions
from .latents import Latents, decode_sparse


@dataclass
class CodebookOptions(TypeOptions):
    """No options of its own; refuses a penalty (its sparsity is k codes per position)."""

    def check(self, run) -> None:
        if any(c != 0 for c in run.sparsity_coeff):
            raise UserError(
                "--sparsity-coeff does not apply to --arch codebook (its sparsity is --k codes per position)"
            )


class CodebookSae(SparseCoder):
    Options = CodebookOptions
    capabilities = Capabilities(uses_k=True, transcoder=False)  # codes are chosen by similarity to the input
    foreign = ForeignNames(
        saelens="codebook", saelab_only="codebook features (binary code activations, codes chosen by cosine similarity)"
    )
    uses_unit_norm_decoder = False  # a code's norm is what it adds

    def __init__(self, cfg: SaeConfig):
        if cfg.is_transcoder:
            raise ValueError("a codebook reconstructs its own site (codes are chosen by similarity to the input)")
        if cfg.k is None or not 1 <= cfg.k <= cfg.d_sae:
            raise ValueError(f"codebook k={cfg.k} must be between 1 and the codebook size {cfg.d_sae}")
        super().__init__(cfg)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, bias_init: str = "median") -> None:
        super().init_from_data(x, y, bias_init)
        r = (x * self.in_scale - self.b_dec).norm(dim=1).median()
        self.W_dec.mul_(r / math.sqrt(self.cfg.k) / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def similarities(self, x_in: torch.Tensor) -> torch.Tensor:
        """cos(x - b_dec, c_j) [rows, d_sae] of scaled inputs."""
        xc = x_in - self.b_dec
        codes = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return (xc / xc.norm(dim=1, keepdim=True).clamp_min(1e-8)) @ codes.t()

    def encode(self, x_in):
        with torch.no_grad():
            sim = self.similarities(x_in)
            idx = sim.topk(self.cfg.k, dim=-1, sorted=False).indices
        ones = torch.ones(idx.shape, dtype=x_in.dtype, device=x_in.device)
        return Latents(ones, idx, None, x_in.shape[0], self.cfg.d_sae), x_in.new_zeros(()), sim

    def auxk_loss(self, x_in, pre, residual, dead):
        """Each row's most similar dead code (activation 1) models that row's residual (FVU units)."""
        with torch.no_grad():
            idx = pre.masked_fill(~dead, float("-inf")).argmax(dim=-1, keepdim=True)
        lat = Latents(
            torch.ones(idx.shape, dtype=x_in.dtype, device=x_in.device), idx, None, x_in.shape[0], self.cfg.d_sae
        )
        pred = decode_sparse(lat, self.W_dec)
        denom = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return self.cfg.aux_coeff * (pred - residual).pow(2).sum() / denom

    def folded_state(self) -> dict[str, torch.Tensor]:
        out = super().folded_state()
        # (W_enc is not trained: the selection compares with the codes' directions, saved here for readers)
        out["W_enc"] = (out["W_dec"] / out["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)).t().contiguous()
        out["b_enc"] = torch.zeros_like(out["b_enc"])
        return out
