"""JumpReLU SAE (Rajamanoharan et al. 2024): z = pre * H(pre - theta), trained with an L0 penalty.

The step function has zero gradient almost everywhere, so theta and the L0 penalty use a
straight-through estimator with a rectangle kernel of width `jumprelu_bandwidth`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import SparseCoder
from .latents import from_dense


def _rect(x):
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


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
        g_theta = (-(theta / bw) * _rect((pre - theta) / bw) * g).sum(0)
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
        g_theta = (-(1.0 / bw) * _rect((pre - theta) / bw) * g).sum(0)
        return None, g_theta * theta, None


class JumpReLUSae(SparseCoder):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    def encode(self, x_in):
        pre = self.preacts(x_in)
        bw = self.cfg.jumprelu_bandwidth
        acts = _JumpReLU.apply(pre, self.log_threshold, bw)
        sparsity = x_in.new_zeros(())
        if torch.is_grad_enabled() and self.cfg.sparsity_coeff:
            sparsity = self.cfg.sparsity_coeff * _Step.apply(pre, self.log_threshold, bw).sum(-1).mean()
        return from_dense(acts), sparsity, pre.detach()

    def extra_state_tensors(self):
        return {"threshold": self.log_threshold.detach().exp()}

    def load_extra_tensors(self, tensors):
        with torch.no_grad():
            self.log_threshold.copy_(tensors["threshold"].clamp_min(1e-12).log())
