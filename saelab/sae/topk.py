"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, ReLU them."""

from __future__ import annotations

import torch

from .base import SparseCoder
from .kind import Capabilities, ForeignNames, NoOptions
from .latents import gather_preacts


class TopKSae(SparseCoder):
    Options = NoOptions
    capabilities = Capabilities(uses_k=True, torchrun=("data", "modules", "latents"))
    foreign = ForeignNames(saelens="topk", saelens_reader=True, sparsify=True)

    def encode(self, x_in):
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            pick = self.reductions.row_topk(pre, self.cfg.k)  # a latent slice: its share of the global top-k
        rows = pick.row_ids()
        if torch.is_grad_enabled():
            vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, pick.cols.reshape(-1)).relu()
        else:
            vals = pick.take(pre).relu_()
        lat = pick.latents(vals, pick.cols, x_in.shape[0], self.cfg.d_sae)
        return lat, x_in.new_zeros(()), pre
