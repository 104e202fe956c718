"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

The decoder is free (not unit norm): the penalty sum_j z_j * ||W_dec_j|| stops the model from
shrinking activations and growing decoder rows to dodge the L1.
"""

from __future__ import annotations

from .base import SparseCoder
from .latents import from_dense


class ReluSae(SparseCoder):
    uses_unit_norm_decoder = False

    def encode(self, x_in):
        pre = self.preacts(x_in)
        acts = pre.relu()
        sparsity = x_in.new_zeros(())
        if self.cfg.sparsity_coeff:
            sparsity = self.cfg.sparsity_coeff * (acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        return from_dense(acts), sparsity, pre.detach()
