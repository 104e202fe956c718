"""The penalty architectures (relu, jumprelu, gated) train through the sparse kernels: their loss and
every parameter's gradient equal a dense autograd re-implementation of the equations written here
(not the package's code), with the sparse backward and with its dense fallback; inference keeps
exactly the latents of the dense definition; the straight-through zeros do not count as firing."""

import math

import pytest
import torch

from saelab.sae import SaeConfig, build_sae, gated, jumprelu, relu
from saelab.sae.latents import from_dense
from saelab.train.objectives import sae_loss

N, D_IN, D_OUT, D_SAE = 96, 12, 10, 40


def _sae(arch: str, transcoder: bool, seed: int = 0):
    """A random dictionary with every parameter away from its init (a free-norm decoder for relu)."""
    g = torch.Generator().manual_seed(seed)
    cfg = SaeConfig(
        arch,
        d_in=D_IN,
        d_sae=D_SAE,
        hookpoint="h",
        sparsity_coeff=0.3,
        d_out=D_OUT if transcoder else None,
        out_hookpoint="o" if transcoder else None,
        skip=transcoder,
        jumprelu_bandwidth=0.15,
    )
    sae = build_sae(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.W_enc.mul_(3.0)
        sae.b_enc.sub_(0.5)  # relu / gated: a part of the entries off
        sae.W_dec.add_(0.2)
        sae.in_scale.fill_(1.3)
        sae.out_scale.fill_(0.7)
    return sae.train()


def _data(transcoder: bool):
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D_IN, generator=g), torch.randn(N, D_OUT if transcoder else D_IN, generator=g)


def _rect(u):
    return ((u > -0.5) & (u < 0.5)).float()


def reference_loss(sae, x, y):
    """The dense equations with plain autograd (the straight-through estimator by detach)."""
    c = sae.cfg
    xs, target = x * sae.in_scale, y * sae.out_scale
    xc = xs if c.is_transcoder else xs - sae.b_dec
    extra = 0.0
    if c.arch == "gated":
        gate = xc @ sae.W_enc + sae.b_enc
        mag = xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
        acts = (gate > 0).float() * mag.relu()
        sparsity = c.sparsity_coeff * (gate.relu() * sae.W_dec.norm(dim=1)).sum(-1).mean()
        via_gate = gate.relu() @ sae.W_dec.detach() + sae.b_dec.detach()
        extra = (via_gate - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
    else:
        pre = xc @ sae.W_enc + sae.b_enc
        if c.arch == "relu":
            acts = pre.relu()
            sparsity = c.sparsity_coeff * (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
        else:  # jumprelu: z = pre H(pre - theta), d z / d theta := -(theta / bw) rect((pre - theta) / bw)
            theta, bw = sae.log_threshold.exp(), c.jumprelu_bandwidth * math.sqrt(c.d_in)
            on = (pre > theta).float()
            kern = _rect((pre - theta) / bw).detach()
            acts = pre * on + (-(theta.detach() / bw) * kern) * (theta - theta.detach())
            step = on + (-(1.0 / bw) * kern) * (theta - theta.detach())
            sparsity = c.sparsity_coeff * step.sum(-1).mean()
    recon = acts @ sae.W_dec + sae.b_dec
    if c.skip:
        recon = recon + xs @ sae.W_skip.t()
    fvu = (recon - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
    return fvu + sparsity + extra, acts


def _place_thresholds(sae, x):
    """Thresholds inside each latent's pre-activation range, so that entries fall on both sides of
    theta and inside the kernel window (|pre - theta| < bw / 2) while inactive."""
    with torch.no_grad():
        pre = sae.preacts(sae.encoder_input(x))
        theta = pre.quantile(0.805, dim=0).clamp_min(0.05)  # between two samples: no entry sits on theta
        sae.log_threshold.copy_(theta.log())
        bw = sae.bandwidth()
        window_only = (pre <= theta) & ((pre - theta) / bw > -0.5)
    assert window_only.sum() > 20 and (pre > theta).sum() > 20
    return window_only


def _grads(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in sae.named_parameters()}


@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("transcoder", [False, True])
@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated"])
def test_sparse_training_equals_the_dense_equations(monkeypatch, arch, transcoder, backward):
    module = {"relu": relu, "jumprelu": jumprelu, "gated": gated}[arch]
    monkeypatch.setattr(module, "DENSE_BACKWARD_ABOVE", 1.0 if backward == "sparse" else 0.0)
    sae = _sae(arch, transcoder)
    x, y = _data(transcoder)
    if arch == "jumprelu":
        _place_thresholds(sae, x)
    want_loss, acts = reference_loss(sae, x, y)
    want = _grads(sae, want_loss)
    loss, _, out = sae_loss(sae, x, y, torch.zeros(D_SAE, dtype=torch.bool))
    got = _grads(sae, loss)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for name in want:
        assert want[name].abs().sum() > 0 or name == "W_skip", name  # every parameter really learns
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    # stored zeros (jumprelu's window entries, relu / gated entries whose value is 0) are not fires
    dense = acts.detach() > 0
    assert torch.equal(out.latents.l0_per_row(), dense.sum(1))
    assert torch.equal(out.latents.fire_counts(), dense.sum(0))
    assert out.latents.values.gt(0).sum() == dense.sum()


def test_jumprelu_window_entries_are_kept_with_value_zero():
    sae = _sae("jumprelu", False)
    x, _ = _data(False)
    window_only = _place_thresholds(sae, x)
    lat = sae(x).latents
    rows, cols, vals = lat.flat()
    stored = torch.zeros(N, D_SAE, dtype=torch.bool)
    stored[rows, cols] = True
    assert stored[window_only].all()  # inactive but inside the kernel: carried for its gradient
    assert (vals[window_only[rows, cols]] == 0).all()


@pytest.mark.parametrize("transcoder", [False, True])
@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated"])
def test_inference_keeps_exactly_the_dense_latents(arch, transcoder):
    """Without grad: the latents (values, indices, offsets) and reconstruction of the dense definition
    as the package computed it before the sparse path, bit for bit."""
    sae = _sae(arch, transcoder).eval()
    x, _ = _data(transcoder)
    if arch == "jumprelu":
        _place_thresholds(sae, x)
    with torch.no_grad():
        x_in = sae.encoder_input(x)
        if arch == "gated":
            p = x_in @ sae.W_enc
            if not transcoder:
                p = p - sae.b_dec @ sae.W_enc
            gate, mag = p + sae.b_enc, p * sae.r_mag.exp() + sae.b_mag
            acts = (gate > 0).to(mag.dtype) * mag.relu()
        else:
            pre = sae.preacts(x_in)
            acts = pre.relu() if arch == "relu" else pre * (pre > sae.log_threshold.exp())
        want = from_dense(acts)
        got = sae.encode_raw(x)
        recon = sae.reconstruct(x)
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    want_recon = sae.predict(x_in, want) / sae.out_scale
    assert torch.equal(recon, want_recon)
