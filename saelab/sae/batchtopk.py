"""BatchTopK SAE (Bussmann et al. 2024): keep the k x rows largest activations of the whole batch.

Tokens get a variable number of latents (k on average). For inference the batch dependence is
replaced by one threshold, a running mean of the smallest kept activation during training; the
saved SAE is then a JumpReLU with that threshold for every latent (how SAELens loads it).
"""

from __future__ import annotations

import torch

from .base import SparseCoder
from .latents import Latents, gather_preacts


class BatchTopKSae(SparseCoder):
    uses_k = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    def encode(self, x_in):
        n, d_sae = x_in.shape[0], self.cfg.d_sae
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
        if self.training:
            with torch.no_grad():
                flat = pre.relu().reshape(-1)
                # Keep every activation >= the (k x rows)-th largest: ties at the boundary are all kept,
                # so the set does not depend on how topk orders equal values, and a latent-sharded run
                # (which finds the same threshold from per-rank candidates) keeps exactly this set.
                top = self.top_values(flat, self.cfg.k * n)
                t = top.min() if top.numel() else flat.new_tensor(float("inf"))
                keep = ((flat >= t) & (flat > 0)).nonzero().squeeze(1)  # ascending: rows sorted
                lo = self.reduce_min(flat[keep].min() if keep.numel() else flat.new_tensor(float("inf")))
                if torch.isfinite(lo):
                    # running mean of the smallest kept activation: the inference threshold
                    self.threshold_steps += 1
                    self.threshold += (lo - self.threshold) / self.threshold_steps.clamp_max(1000)
            rows, cols = keep // d_sae, keep % d_sae
        else:
            rows, cols = (pre > self.threshold).nonzero(as_tuple=True)
        if torch.is_grad_enabled():
            vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, cols).relu()
        else:
            vals = pre[rows, cols].relu()
        counts = torch.bincount(rows, minlength=n)
        lat = Latents(vals, cols, torch.cumsum(counts, 0) - counts, n, d_sae)
        return lat, x_in.new_zeros(()), pre

    def top_values(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        """The n largest values of `flat` (latent sharding: of every rank's `flat` together)."""
        return flat.topk(min(n, flat.numel()), sorted=False).values

    def reduce_min(self, lo: torch.Tensor) -> torch.Tensor:
        """The smallest kept activation of the batch (latent sharding: over every rank)."""
        return lo

    @torch.no_grad()
    def finalize(self, x):
        """Set the inference threshold so that, on these inputs, it keeps exactly the k x rows
        activations that batch selection keeps (the running mean lags behind a short run)."""
        pre = self.preacts(self.encoder_input(x)).relu().reshape(-1)
        kept = self.top_values(pre, self.cfg.k * x.shape[0])
        kept = kept[kept > 0]
        if kept.numel():
            self.threshold.fill_(kept.min().item())

    def extra_state_tensors(self):
        return {"threshold": self.threshold.expand(self.cfg.d_sae).clone()}

    def load_extra_tensors(self, tensors):
        t = tensors.get("threshold")
        if t is not None:
            self.threshold.fill_(float(t.reshape(-1)[0]))
