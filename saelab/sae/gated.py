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

Dead latents: a gated latent is dead when pi_gate <= 0 on every input, so AuxK's relu(pi_gate) is 0
and passes no gradient (at 1M tokens a quarter of the latents died at L0 33 from the zero-bias
start; 4.8% at L0 28.5 from the sparse start, `gated_init_fire`). Revival here uses
exp(pi_gate) instead, as ghost grads do (Jermyn & Templeton 2024): on each row's top dead latents
(AuxK's selection) the values exp(pi_gate), rescaled per row so the revival's output has a tenth of
the residual's norm, decode the residual; its gradient raises the gates of the dead latents whose
decoder points along what the live ones miss, until they open. The row scale makes the term
independent of the width and of how many latents are dead. Ghost grads' half of the residual's norm
only raises a gate whose decoder has cosine > 1/2 with the residual: on planted data it pushed every
shut gate further down (tests/test_gated_revival.py), a tenth opened all of them.

Every gradient lives on the entries with pi_gate > 0, so training runs on those only, as TopK does:
the shared product without grad, the selected entries gathered with a sparse backward, both paths,
the L1 and the auxiliary decode (embedding_bag, frozen decoder) on them; the gradients equal the
dense equations' (tests/test_sparse_penalty_paths.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import INIT_ROWS, SparseCoder, firing_thresholds
from .kind import LOCAL_ONLY, Capabilities, ForeignNames, TypeOptions, check_fraction, start_option
from .latents import DENSE_BACKWARD_ABOVE, Latents, decode_sparse, gather_preacts, latents_of, weighted_l1

GATED_INIT_FIRE = 0.01  # a new gated SAE's gates open on this share of the first batch (docs/DICTIONARIES.md)


@dataclass
class GatedOptions(TypeOptions):
    gated_init_fire: float | None = start_option(
        None,
        "gated: each gate's bias starts where the gate opens on this fraction of the first batch: initial "
        "L0 = fraction x --dict-size (none: 0.01; 0.5 is about SAELens' zero biases; docs/DICTIONARIES.md)",
    )

    def check(self, run) -> None:
        check_fraction("gated_init_fire", self.gated_init_fire)

    def sae_fields(self, fresh: bool) -> dict:
        return {"gated_init_fire": self.gated_init_fire or GATED_INIT_FIRE} if fresh else {}


class GatedSae(SparseCoder):
    Options = GatedOptions
    # the gate path learns from the auxiliary reconstruction, a local loss. Data-parallel is inexact: the
    # L1 term is a mean over the rank's rows, not a share of the target variance (W_enc differs from one process)
    capabilities = Capabilities(losses=LOCAL_ONLY, torchrun=("modules",))
    foreign = ForeignNames(saelens="gated", saelens_reader=True, saelens_tensors={"b_enc": "b_gate"})
    scales_initial_code = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self._gate: Latents | None = None  # relu(pi_gate) on its active entries, of the last training encode

    @torch.no_grad()
    def init_code(self, x):
        """With `gated_init_fire` f: each gate's bias at minus the upper-f quantile of its first-batch
        pre-activations, so every gate opens on a fraction f of tokens (initial L0 = f x d_sae) and the
        magnitudes start as the pre-activations themselves (b_mag 0), a JumpReLU-like code. With the
        zero biases of SAELens' start about half the gates open (L0 in the thousands), the dense regime
        that made gated train at 0.2x the bare forward for its first ~400k tokens (docs/research/dictionaries.md)."""
        frac = self.cfg.gated_init_fire
        if frac:
            self.b_enc.sub_(firing_thresholds(self.preacts(self.encoder_input(x[:INIT_ROWS])), frac))

    def encode(self, x_in):
        n, d_sae, grad = x_in.shape[0], self.cfg.d_sae, torch.is_grad_enabled()
        with torch.no_grad():  # the product both paths share, centred by b_dec through the bias (encoder_bias)
            p = x_in @ self.W_enc
            if not self.cfg.is_transcoder:
                p = p - self.b_dec @ self.W_enc
            gate = p + self.b_enc
            rows, cols = (gate > 0).nonzero(as_tuple=True)
        self._gate = None
        if grad:
            centring = p.new_zeros(d_sae) if self.cfg.is_transcoder else -(self.b_dec @ self.W_enc)
            pe = gather_preacts(x_in, self.W_enc, centring, p, rows, cols, DENSE_BACKWARD_ABOVE)
        else:
            pe = p[rows, cols]
        mag = (pe * self.r_mag.exp()[cols] + self.b_mag[cols]).relu()
        keep = (mag > 0).nonzero().squeeze(1)  # f = 1[gate > 0] relu(mag): its non-zero entries
        lat = latents_of(mag[keep], rows[keep], cols[keep], n, d_sae)
        sparsity = x_in.new_zeros(())
        if grad:
            gate_act = pe + self.b_enc[cols]  # relu(pi_gate) on its non-zero entries
            self._gate = latents_of(gate_act, rows, cols, n, d_sae)
            if self.cfg.sparsity_coeff:
                sparsity = self.cfg.sparsity_coeff * weighted_l1(gate_act, cols, self.W_dec, n)
        return lat, sparsity, gate

    def forward(self, x, dead=None, target=None):
        try:
            return super().forward(x, dead, target)
        finally:
            self._gate = None  # the stash lives for one forward only

    def extra_loss(self, x_in, lat, recon, target):
        """The auxiliary reconstruction through the gate path with a frozen decoder."""
        if self._gate is None:
            return recon.new_zeros(())
        via_gate = decode_sparse(self._gate, self.W_dec.detach()) + self.b_dec.detach()
        return (via_gate - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)

    def auxk_values(self, chosen):
        """exp(pi_gate) as the dead latents' values (module docstring: dead latents). The clamp only
        guards exp (auxk_rescale's row scale cancels it) and keeps masked entries finite."""
        return chosen.clamp(max=20).exp()

    def auxk_rescale(self, pred, residual):
        """Each row's revival output scaled to a tenth of the residual's norm."""
        with torch.no_grad():
            scale = residual.norm(dim=1) / (10 * pred.norm(dim=1)).clamp_min(1e-12)
        return pred * scale[:, None]

    def rescale_code(self, c):
        super().rescale_code(c)  # the gate (sign unchanged) and the magnitude path's x @ W_enc scale by c
        self.b_mag.mul_(c)

    def extra_state_tensors(self):
        return {"r_mag": self.r_mag.detach().clone(), "b_mag": self.b_mag.detach().clone()}

    def load_extra_tensors(self, tensors):
        with torch.no_grad():
            self.r_mag.copy_(tensors["r_mag"])
            self.b_mag.copy_(tensors["b_mag"])
