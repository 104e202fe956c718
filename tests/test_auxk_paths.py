"""AuxK's two paths (SparseCoder.auxk_loss): dense over the dead columns while they are few, the
sparse gather otherwise. Both must equal AuxK written out from its definition (Gao et al. 2024):
each row's k_aux dead latents with the highest pre-activations model the residual."""

import pytest
import torch

import saelab.sae.base as base
from saelab.sae import SaeConfig, build_sae

D, M, HOOK = 24, 96, "model.layers.1"


def reference_aux(sae, x_in, residual, dead):
    """AuxK from its definition, every product dense; gated's revival values and row scale as documented."""
    pre = x_in @ sae.W_enc + sae.encoder_bias()
    k_aux = min(sae.cfg.aux_k or sae.cfg.d_in // 2, int(dead.sum()))
    masked = pre.detach().masked_fill(~dead, float("-inf"))
    keep = torch.zeros_like(pre).scatter_(1, masked.topk(k_aux, dim=1).indices, 1.0)
    if sae.cfg.arch == "gated":
        pred = (pre.clamp(max=20).exp() * keep) @ sae.W_dec
        scale = residual.norm(dim=1) / (10 * pred.detach().norm(dim=1))
        pred = pred * scale[:, None]
    else:
        pred = (pre.relu() * keep) @ sae.W_dec
    return sae.cfg.aux_coeff * (pred - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()


def grads(sae, loss):
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    return [g.clone() for g in torch.autograd.grad(loss, params)]


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "gated"])
@pytest.mark.parametrize("n_dead", [5, 12, 40])  # k_aux = 12 (d_in / 2): fewer, as many, more dead than k_aux
@pytest.mark.parametrize("dense_up_to", [0, 1000])  # 0: always the sparse gather; 1000: always dense
def test_both_auxk_paths_equal_the_definition(arch, n_dead, dense_up_to, monkeypatch):
    monkeypatch.setattr(base, "AUXK_DENSE_UP_TO", dense_up_to)
    g = torch.Generator().manual_seed(n_dead)
    sae = build_sae(
        SaeConfig(
            arch, d_in=D, d_sae=M, hookpoint=HOOK, k=4 if arch == "topk" else None, sparsity_coeff=0.01, aux_coeff=0.5
        )
    )
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x_in = torch.randn(64, D, generator=g)
    residual = torch.randn(64, D, generator=g)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[torch.randperm(M, generator=g)[:n_dead]] = True
    with torch.no_grad():
        pre = x_in @ sae.W_enc + sae.encoder_bias()
    got = sae.auxk_loss(x_in, pre, residual, dead)
    want = reference_aux(sae, x_in, residual, dead)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads(sae, got), grads(sae, reference_aux(sae, x_in, residual, dead))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert got.item() > 0
