"""JumpReLU SAE (Rajamanoharan et al. 2024): z = pre * H(pre - theta), trained with an L0 penalty.

The step function has zero gradient almost everywhere, so theta and the L0 penalty use the paper's
straight-through estimator with a rectangle kernel of width `jumprelu_bandwidth` (theta trained as
log(theta), as in the paper and SAELens).

Short runs (docs/research/eval.md "Each architecture on one setting"). The paper's constants, threshold 0.001
and bandwidth 0.001, are for inputs of unit mean squared norm and 300k+ steps. Our training space has
mean squared norm d, so pre-activations are ~sqrt(d) larger, and a run has a few hundred steps: Adam
moves log(theta) by at most ~lr per step, and a 0.001-wide kernel almost never sees a pre-activation,
so theta stayed near 0.001 and the dictionary stayed a dense ReLU (L0 140 of 256). Two changes fix
that, both measured on the synthetic setting: theta starts from the data (each latent at the
`jumprelu_init_fire` upper quantile of its pre-activations on the first batch), and the paper's
bandwidth is scaled by sqrt(d_in) to our input scale (`bandwidth`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..options import opt
from .base import INIT_ROWS, SparseCoder, firing_thresholds
from .kind import Capabilities, ForeignNames, TypeOptions, check_fraction, start_option
from .latents import DENSE_BACKWARD_ABOVE, gather_preacts, latents_of


@dataclass
class JumpReLUOptions(TypeOptions):
    jumprelu_init_fire: float | None = start_option(
        None,
        "jumprelu: each latent's threshold starts at the quantile of its first-batch pre-activations above "
        "which it fires on this fraction of tokens: initial L0 = fraction x --dict-size (none: 0.1, docs/DICTIONARIES.md)",
    )
    jumprelu_threshold_lr: float | None = opt(
        None,
        "jumprelu: the thresholds' learning rate as a multiple of --lr (none: 1). Adam moves a log-threshold "
        "by about its lr per step, so short runs need > 1 to let --sparsity-coeff set the L0 "
        "(docs/DICTIONARIES.md)",
    )

    def check(self, run) -> None:
        check_fraction("jumprelu_init_fire", self.jumprelu_init_fire)
        if self.jumprelu_threshold_lr is not None and not self.jumprelu_threshold_lr > 0:
            raise UserError(f"--jumprelu-threshold-lr is a positive multiple of --lr; got {self.jumprelu_threshold_lr}")

    def sae_fields(self, fresh: bool) -> dict:
        """None keeps SaeConfig's defaults (init fire 0.1, threshold rate 1): cfg.json as before the options."""
        out = {}
        if fresh and self.jumprelu_init_fire is not None:
            out["jumprelu_init_fire"] = self.jumprelu_init_fire
        if self.jumprelu_threshold_lr is not None:
            out["jumprelu_threshold_lr"] = self.jumprelu_threshold_lr
        return out


def _rect(x):
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


# Both functions act elementwise on `pre` with `log_theta` broadcast against it: dense [rows, d_sae]
# pre-activations with log_theta [d_sae], or gathered entries [nnz] with log_theta[cols] [nnz]; the
# threshold gradient is summed back to log_theta's shape.
class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, log_theta, bw):
        theta = log_theta.exp()
        ctx.save_for_backward(pre, theta)
        ctx.bw = bw
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        bw = ctx.bw
        g_pre = g * (pre > theta)
        g_theta = (-(theta / bw) * _rect((pre - theta) / bw) * g).sum_to_size(theta.shape)
        return g_pre, g_theta * theta, None  # chain rule through theta = exp(log_theta)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, log_theta, bw):
        theta = log_theta.exp()
        ctx.save_for_backward(pre, theta)
        ctx.bw = bw
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        bw = ctx.bw
        g_theta = (-(1.0 / bw) * _rect((pre - theta) / bw) * g).sum_to_size(theta.shape)
        return None, g_theta * theta, None


class JumpReLUSae(SparseCoder):
    Options = JumpReLUOptions
    capabilities = Capabilities()
    foreign = ForeignNames(saelens="jumprelu", saelens_reader=True)

    @property
    def scales_initial_code(self) -> bool:
        """Only with the data start: `jumprelu_init_fire` None keeps the paper's constant start as is."""
        return bool(self.cfg.jumprelu_init_fire)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    @torch.no_grad()
    def init_code(self, x):
        """Each latent's threshold at the upper `jumprelu_init_fire` quantile of its pre-activations on
        the first batch: every latent starts firing on that fraction of tokens (initial L0 = fraction x
        d_sae), and the L0 penalty moves it from there."""
        frac = self.cfg.jumprelu_init_fire
        if not frac:
            return
        theta = firing_thresholds(self.preacts(self.encoder_input(x[:INIT_ROWS])), frac)
        self.log_threshold.copy_(theta.clamp_min(self.cfg.jumprelu_init_threshold).log())

    def optimizer_groups(self) -> list[dict]:
        """The thresholds in a group of their own when `jumprelu_threshold_lr` != 1 (one group otherwise,
        so checkpoints written before the option load unchanged). log_threshold is the last parameter,
        so the order of parameters is the same either way."""
        scale = self.cfg.jumprelu_threshold_lr
        if scale == 1:
            return super().optimizer_groups()
        rest = [p for p in self.parameters() if p is not self.log_threshold]
        return [{"params": rest}, {"params": [self.log_threshold], "lr_scale": scale}]

    def bandwidth(self) -> float:
        """The kernel width in the training space: the paper's width is for unit mean squared norm, ours
        is d_in, so pre-activations (and the width) are sqrt(d_in) times larger."""
        return self.cfg.jumprelu_bandwidth * math.sqrt(self.cfg.d_in)

    def encode(self, x_in):
        """Training: the straight-through estimator's gradients are non-zero on every entry with
        pre > theta - bw/2 (active, or inactive but inside the kernel window), so those entries are
        gathered (sparse backward) and the two functions run on them with per-entry thresholds;
        inactive ones carry the value 0 and still get d loss / d value from the sparse decode."""
        n, bias, bw = x_in.shape[0], self.encoder_bias(), self.bandwidth()
        grad = torch.is_grad_enabled()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            theta = self.log_threshold.exp()
            # a slightly wider set than the window's float test (pre - theta) / bw > -0.5: an entry
            # selected for nothing has value 0 and kernel 0, so it adds exactly nothing
            lo = theta - 0.5 * bw - 1e-5 * (0.5 * bw + theta) if grad else theta
            rows, cols = (pre > lo).nonzero(as_tuple=True)
        sparsity = x_in.new_zeros(())
        if not grad:
            return latents_of(pre[rows, cols], rows, cols, n, self.cfg.d_sae), sparsity, pre
        p = gather_preacts(x_in, self.W_enc, bias, pre, rows, cols, DENSE_BACKWARD_ABOVE)
        log_theta = self.log_threshold[cols]
        vals = _JumpReLU.apply(p, log_theta, bw)
        if self.cfg.sparsity_coeff:  # every active entry is selected: the sum is the batch's L0
            sparsity = self.cfg.sparsity_coeff * _Step.apply(p, log_theta, bw).sum() / n
        return latents_of(vals, rows, cols, n, self.cfg.d_sae), sparsity, pre

    def rescale_code(self, c):
        super().rescale_code(c)
        self.log_threshold.add_(math.log(c))  # thresholds scale with the pre-activations: same active set

    def extra_state_tensors(self):
        return {"threshold": self.log_threshold.detach().exp()}

    def load_extra_tensors(self, tensors):
        with torch.no_grad():
            self.log_threshold.copy_(tensors["threshold"].clamp_min(1e-12).log())
