"""The dictionaries themselves: sparse kernels equal their dense definitions, saving folds the
input scaling without changing outputs, each architecture behaves as its method says."""

import pytest
import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.base import geometric_median
from saelab.sae.folder import Provenance, load_sae, save_sae
from saelab.sae.latents import decode_sparse, gather_preacts


def test_gather_preacts_gradients_match_dense():
    torch.manual_seed(0)
    x = torch.randn(7, 5, requires_grad=True)
    W = torch.randn(5, 11, requires_grad=True)
    b = torch.randn(11, requires_grad=True)
    idx = torch.randint(0, 11, (7, 3))
    rows = torch.arange(7).repeat_interleave(3)
    w = torch.randn(21)
    with torch.no_grad():
        pre = x @ W + b
    (gather_preacts(x, W, b, pre, rows, idx.reshape(-1)) * w).sum().backward()
    sparse = (x.grad.clone(), W.grad.clone(), b.grad.clone())
    x.grad = W.grad = b.grad = None
    ((x @ W + b)[rows, idx.reshape(-1)] * w).sum().backward()
    for s, d in zip(sparse, (x.grad, W.grad, b.grad)):
        torch.testing.assert_close(s, d)


def test_sparse_decode_equals_dense():
    sae = build_sae(SaeConfig("topk", d_in=6, d_sae=20, hookpoint="h", k=4))
    x = torch.randn(9, 6)
    lat = sae.encode_raw(x)
    torch.testing.assert_close(decode_sparse(lat, sae.W_dec), lat.to_dense() @ sae.W_dec)
    assert (lat.l0_per_row() <= 4).all()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_save_folds_scaling_and_roundtrips(tmp_path, arch):
    torch.manual_seed(1)
    sae = build_sae(SaeConfig(arch, d_in=8, d_sae=32, hookpoint="model.layers.0", k=4))
    x = torch.randn(64, 8) * 37 + 5  # far from unit scale, so folding matters
    sae.init_from_data(x, x)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.2, 0.2)
    if arch == "batchtopk":
        sae.train()
        sae(x)  # sets the inference threshold
    sae.eval()
    x2 = torch.randn(64, 8) * 37 + 5  # fresh data: none sits exactly on a learned threshold
    before = sae.reconstruct(x2)
    folder = save_sae(sae, tmp_path / arch, Provenance(model_name="m", context=64))
    loaded, cfg = load_sae(folder)
    torch.testing.assert_close(loaded.reconstruct(x2), before, rtol=1e-4, atol=1e-3)
    assert cfg["d_in"] == 8 and cfg["d_sae"] == 32 and cfg["metadata"]["hook_name"] == "model.layers.0"
    assert (
        cfg["architecture"]
        == {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}[arch]
    )
    if arch == "topk":
        assert cfg["k"] == 4


def test_batchtopk_keeps_k_per_token_on_average():
    sae = build_sae(SaeConfig("batchtopk", d_in=16, d_sae=64, hookpoint="h", k=5)).train()
    out = sae(torch.randn(128, 16))
    assert out.latents.values.gt(0).sum().item() == pytest.approx(5 * 128, abs=5)
    assert out.latents.l0_per_row().float().std() > 0  # variable per token, unlike TopK


def test_jumprelu_threshold_learns_from_l0_penalty():
    torch.manual_seed(0)
    sae = build_sae(
        SaeConfig(
            "jumprelu",
            d_in=8,
            d_sae=32,
            hookpoint="h",
            sparsity_coeff=1.0,
            jumprelu_init_threshold=0.5,
            jumprelu_bandwidth=2.0,
        )
    )
    x = torch.randn(256, 8)
    out = sae(x)
    out.sparsity_loss.backward()
    # the L0 penalty can only be lowered by raising thresholds
    assert (sae.log_threshold.grad <= 0).all() and (sae.log_threshold.grad < 0).any()


def test_relu_l1_is_weighted_by_decoder_norms():
    sae = build_sae(SaeConfig("relu", d_in=4, d_sae=8, hookpoint="h", sparsity_coeff=1.0))
    x = torch.randn(16, 4)
    a = sae(x).sparsity_loss
    with torch.no_grad():
        sae.W_dec.mul_(3)
    assert sae(x).sparsity_loss.item() == pytest.approx(3 * a.item(), rel=1e-5)


def test_geometric_median_ignores_outliers():
    pts = torch.cat([torch.randn(99, 3) * 0.01, torch.tensor([[1000.0, 0, 0]])])
    assert geometric_median(pts).norm() < 0.1
    assert pts.mean(0).norm() > 5


def test_batchtopk_finalize_calibrates_threshold_to_k():
    torch.manual_seed(0)
    sae = build_sae(SaeConfig("batchtopk", d_in=16, d_sae=64, hookpoint="h", k=5))
    x = torch.randn(2048, 16)
    sae.finalize(x)
    sae.eval()
    # on the inputs it calibrated on it keeps exactly k x rows (on the smallest kept value it kept one fewer)
    assert int(sae.encode_raw(x).l0_per_row().sum()) == 5 * 2048
    assert sae.encode_raw(torch.randn(2048, 16)).l0_per_row().float().mean().item() == pytest.approx(5, rel=0.1)
