"""The variable-L0 types' initial code is shrunk to its least-squares length (SparseCoder.fit_initial_scale).

Without it a JumpReLU at layer 6 collapsed to L0 ~9 with a fifth of its latents dead at every penalty
coefficient (docs/research/dictionaries.md): the tied init's first reconstruction overshoots the input. BatchTopK
overshot too (training FVU 8.6 after 8 steps with 16,384 latents at layer 6) and lost ~40 of 244 steps."""

import pytest
import torch

from saelab.sae import SaeConfig, build_sae

D, D_SAE, HOOK = 48, 384, "model.layers.2"


def data(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(64, D, generator=g)
    on = torch.rand(n, 64, generator=g) < 0.08
    return (on * (1 + torch.rand(n, 64, generator=g))) @ feats + 3.0  # an offset for b_dec to take


def first_fvu(sae, x):
    with torch.no_grad():
        x_in = sae.encoder_input(x)
        lat = sae.encode(x_in)[0]
        target = x * sae.out_scale
        return ((sae.decode(lat) - target).pow(2).sum() / (target - sae.b_dec).pow(2).sum()).item(), lat


@pytest.mark.parametrize("arch", ["jumprelu", "relu", "gated", "batchtopk", "matryoshka"])
def test_the_fit_keeps_the_active_set_and_brings_the_first_reconstruction_under_the_input(arch):
    torch.manual_seed(0)
    x = data()
    extra = {"jumprelu": {"jumprelu_init_fire": 0.2}, "batchtopk": {"k": 8}, "matryoshka": {"k": 8}}.get(arch, {})
    fitted = build_sae(SaeConfig(arch, d_in=D, d_sae=D_SAE, hookpoint=HOOK, sparsity_coeff=0.01, **extra))
    raw = build_sae(SaeConfig(arch, d_in=D, d_sae=D_SAE, hookpoint=HOOK, sparsity_coeff=0.01, **extra))
    raw.load_state_dict(fitted.state_dict())
    fitted.init_from_data(x, x)
    if arch in ("batchtopk", "matryoshka"):  # the fit's encode does not count as a step of the running threshold
        assert fitted.threshold_steps.item() == 0 and fitted.threshold.item() == 0
    raw.fit_initial_scale = lambda x, y: 1.0  # the same init without the fit
    raw.init_from_data(x, x)
    fvu_raw, lat_raw = first_fvu(raw, x)
    fvu_fit, lat_fit = first_fvu(fitted, x)
    assert fvu_raw > 1.0  # the overshoot the fit is for
    assert fvu_fit < 1.0  # the best scalar multiple is never worse than no code at all
    d_raw, d_fit = lat_raw.to_dense(), lat_fit.to_dense()
    # the same active latents up to rounding: an entry whose pre-activation sits on the boundary (JumpReLU's
    # thresholds are observed quantiles; a gate or pre-activation within float error of 0) may flip once
    # both sides are scaled by c. A wrong rescale (bias or thresholds left unscaled) flips thousands.
    flips = ((d_raw > 0) != (d_fit > 0)).sum().item()
    assert flips <= D_SAE
    both = (d_raw > 0) & (d_fit > 0)
    c = (d_fit[both].sum() / d_raw[both].sum()).item()
    assert 0 < c < 1
    torch.testing.assert_close(d_fit[both], d_raw[both] * c, rtol=1e-4, atol=1e-5)  # every activation times one c
    # c is the least-squares scale: FVU is minimal there (a slightly larger or smaller c is worse)
    target = x * fitted.out_scale - fitted.b_dec
    rec = lambda s: ((d_raw * s) @ fitted.W_dec - target).pow(2).sum().item()  # noqa: E731
    assert rec(c) <= min(rec(c * 0.9), rec(c * 1.1))


@pytest.mark.parametrize("fire", [0.02, 0.1])
def test_gated_init_fire_opens_each_gate_on_that_fraction_of_the_first_batch(fire):
    """--gated-init-fire: every gate opens on `fire` of the first batch's rows (L0 = fire x d_sae), the
    least-squares fit after it keeps that set, and the magnitudes are the pre-activations' (positive)."""
    x = data()
    sae = build_sae(SaeConfig("gated", d_in=D, d_sae=D_SAE, hookpoint=HOOK, sparsity_coeff=0.01, gated_init_fire=fire))
    zero = build_sae(SaeConfig("gated", d_in=D, d_sae=D_SAE, hookpoint=HOOK, sparsity_coeff=0.01))
    zero.load_state_dict(sae.state_dict())
    sae.init_from_data(x, x)
    zero.init_from_data(x, x)
    with torch.no_grad():
        gate = sae.encode(sae.encoder_input(x))[2]
        open_share = (gate > 0).float().mean(0)  # per latent, over the first batch's rows
        l0, l0_zero = (
            (first_fvu(sae, x)[1].to_dense() > 0).sum(1).float().mean().item(),
            (first_fvu(zero, x)[1].to_dense() > 0).sum(1).float().mean().item(),
        )
    # every gate opens on `fire` of the rows, up to the quantile's rank and ties (one row in 4,096)
    assert (open_share - fire).abs().max().item() <= 2 / x.shape[0]
    assert abs(l0 - fire * D_SAE) <= 0.02 * fire * D_SAE + 1  # the magnitudes are non-zero where a gate opens
    assert l0_zero > 0.3 * D_SAE  # the zero-bias start opens about half of them: the dense regime


def test_firing_thresholds_leave_no_row_on_the_boundary():
    """The threshold lies between two order statistics: exactly floor(fraction x rows) rows above it,
    none on it, so scaling both sides (fit_initial_scale) cannot flip a row by rounding."""
    from saelab.sae.base import firing_thresholds

    pre = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    theta = firing_thresholds(pre, 0.1)
    assert ((pre > theta).sum(0) == 409).all()  # 4096 - ceil(0.9 x 4096) = 409
    assert not (pre == theta).any()
    for c in (0.3, 0.123456, 0.7):
        assert torch.equal((pre * c) > (theta * c), pre > theta)


def test_topk_is_left_alone():
    x = data()
    sae = build_sae(SaeConfig("topk", d_in=D, d_sae=D_SAE, hookpoint=HOOK, k=8))
    w = sae.W_enc.detach().clone()
    sae.init_from_data(x, x)
    assert torch.equal(sae.W_enc, w)
