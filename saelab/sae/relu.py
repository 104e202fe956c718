"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

The decoder is free (not unit norm): the penalty sum_j z_j * ||W_dec_j|| stops the model from
shrinking activations and growing decoder rows to dodge the L1.

Training goes through the sparse kernels as TopK does: pre-activations without grad, the entries
with pre > 0 (relu's gradient is 0 elsewhere) gathered with a sparse backward, and the penalty taken
on those entries only; gradients equal the dense formulation's (tests/test_sparse_penalty_paths.py).
"""

from __future__ import annotations

import torch

from .base import SparseCoder
from .kind import Capabilities, ForeignNames, NoOptions
from .latents import DENSE_BACKWARD_ABOVE, gather_preacts, latents_of, weighted_l1


class ReluSae(SparseCoder):
    Options = NoOptions
    capabilities = Capabilities()
    # SAELens' transcoders are ReLU too (foreign_saelens.py)
    foreign = ForeignNames(saelens="standard", saelens_reader=True)
    uses_unit_norm_decoder = False
    scales_initial_code = True

    def encode(self, x_in):
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            rows, cols = (pre > 0).nonzero(as_tuple=True)
        if torch.is_grad_enabled():  # selected entries are > 0: their relu is the identity
            vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, cols, DENSE_BACKWARD_ABOVE)
        else:
            vals = pre[rows, cols]
        sparsity = x_in.new_zeros(())
        if self.cfg.sparsity_coeff:
            sparsity = self.cfg.sparsity_coeff * weighted_l1(vals, cols, self.W_dec, x_in.shape[0])
        return latents_of(vals, rows, cols, x_in.shape[0], self.cfg.d_sae), sparsity, pre
