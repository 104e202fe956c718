"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

Which latents fire and how strongly are separate paths sharing W_enc (SAELens names):

    pi_gate = (x - b_dec) @ W_enc + b_gate                 (b_gate is our b_enc)
    pi_mag  = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag
    f       = 1[pi_gate > 0] * relu(pi_mag),     x_hat = f @ W_dec + b_dec

Training loss (the local objective's FVU + these terms, all in FVU units):
    sparsity  sparsity_coeff * sum_j relu(pi_gate)_j * ||W_dec_j||   (mean over rows)
    auxiliary ||y - (relu(pi_gate) @ W_dec' + b_dec')||^2 / Var(y), W_dec' and b_dec' frozen (detached)
The Heaviside gate passes no gradient; the gate path learns only through the two extra terms, the
magnitude path only through the reconstruction. The decoder is kept at unit norm.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SparseCoder
from .latents import from_dense


class GatedSae(SparseCoder):
    local_only = True  # the gate path learns from the auxiliary reconstruction, a local loss

    def __init__(self, cfg):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self._gate_act: torch.Tensor | None = None  # relu(pi_gate) of the last training encode

    def paths(self, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi_gate, pi_mag) [rows, d_sae] of scaled inputs, one matmul shared by both paths."""
        p = x_in @ self.W_enc
        if not self.cfg.is_transcoder:  # centring by b_dec, through the bias (see encoder_bias)
            p = p - self.b_dec @ self.W_enc
        return p + self.b_enc, p * self.r_mag.exp() + self.b_mag

    def encode(self, x_in):
        gate, mag = self.paths(x_in)
        acts = (gate > 0).to(mag.dtype) * mag.relu()
        sparsity = x_in.new_zeros(())
        self._gate_act = None
        if torch.is_grad_enabled():
            self._gate_act = gate.relu()
            if self.cfg.sparsity_coeff:
                sparsity = self.cfg.sparsity_coeff * (self._gate_act * self.W_dec.norm(dim=1)).sum(-1).mean()
        return from_dense(acts), sparsity, gate.detach()

    def forward(self, x, dead=None, target=None):
        try:
            return super().forward(x, dead, target)
        finally:
            self._gate_act = None  # the stash lives for one forward only

    def extra_loss(self, x_in, lat, recon, target):
        """The auxiliary reconstruction through the gate path with a frozen decoder."""
        if self._gate_act is None:
            return recon.new_zeros(())
        via_gate = self._gate_act @ self.W_dec.detach() + self.b_dec.detach()
        return (via_gate - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)

    def extra_state_tensors(self):
        return {"r_mag": self.r_mag.detach().clone(), "b_mag": self.b_mag.detach().clone()}

    def load_extra_tensors(self, tensors):
        with torch.no_grad():
            self.r_mag.copy_(tensors["r_mag"])
            self.b_mag.copy_(tensors["b_mag"])
