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
            k_aux = min(2 * sae.cfg.k, sae.d_site_in // 2, len(cols))
            m = torch.zeros_like(pre)
            if len(cols):
                m[:, cols] = torch.zeros(x.shape[0], len(cols)).scatter_(
                    1, pre.detach()[:, cols].topk(k_aux, dim=1).indices, 1.0
                )
            aux_acts.append(pre.relu() * m)

    def decode(a):
        outs = []
        for t in range(Lc):
            outs.append(sum(a[l] @ sae.W_dec[l][t - l] for l in range(t + 1)))
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


@pytest.mark.parametrize("rows_k", ["ragged", "fixed"])
def test_block_decode_kernel_equals_dense_values_and_gradients(rows_k):
    """clt_kernels.block_decode (the weight gradient by an embedding_bag over the output gradient, the values'
    by aten's per-sample kernel) against dense products, rows of 0..3 entries or k each, float64 gradcheck."""
    from saelab.sae.clt_kernels import block_decode

    torch.manual_seed(0)
    T, n, d, rows = 3, 7, 5, 9
    W = torch.randn(T, n, d, dtype=torch.float64, requires_grad=True)
    counts = torch.randint(0, 4, (rows,)) if rows_k == "ragged" else torch.full((rows,), 2)
    offsets = torch.zeros(rows, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)[:-1]
    idx = torch.randint(0, n, (int(counts.sum()),))
    vals = torch.rand(len(idx), dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(rows, n, dtype=torch.float64).index_put(
        (torch.repeat_interleave(torch.arange(rows), counts), idx), vals, accumulate=True
    )
    G = torch.randn(T, rows, d, dtype=torch.float64)
    out = block_decode(vals, W, idx, offsets)
    (out * G).sum().backward()
    gv, gw = vals.grad.clone(), W.grad.clone()
    vals.grad = W.grad = None
    ref = torch.stack([dense @ W[t] for t in range(T)])
    (ref * G).sum().backward()
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(gw, W.grad, atol=1e-12) and torch.allclose(gv, vals.grad, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v, w: block_decode(v, w, idx, offsets), (vals, W))


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
                y[:, t] += codes[:, l] @ sae.W_dec[l][t - l]
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
    assert clt_train_bytes(30, 2048, 576, 576, 0) == 16 * p + 2**29
    sae = make_clt()
    assert sum(q.numel() for q in sae.parameters()) == clt_params(L, N, D, D)


# ---------------------------------------------------------------- training through the loop
def _sites(model, layers) -> str:
    from saelab.families import family_of

    fam = family_of(model)
    ins = [fam.mlp_in_site(l) for l in layers]
    outs = [fam.mlp_out_site(l) for l in layers]
    return "+".join(ins), "+".join(outs)


def _heldout(model_dir, corpus, layers, tokens=2048):
    """(x, y): concatenated raw MLP inputs and outputs of `layers` on held-out rows."""
    from saelab.data import load_token_rows
    from saelab.models import collect_activations, load_model

    lm = load_model(str(model_dir))
    ins, outs = _sites(lm.model, layers)
    rows = load_token_rows(str(corpus), lm.tokenizer, 64)
    ids = torch.from_numpy(rows.tokens[rows.heldout_rows[: tokens // 64]].astype("int64"))
    acts = collect_activations(lm.model, ids, ins.split("+") + outs.split("+"))
    x = torch.cat([acts[h][:, 1:].reshape(-1, acts[h].shape[-1]).float() for h in ins.split("+")], -1)
    y = torch.cat([acts[h][:, 1:].reshape(-1, acts[h].shape[-1]).float() for h in outs.split("+")], -1)
    return x, y, ins, outs


def _fvu_per_layer(sae, x, y) -> list[float]:
    pred = sae.reconstruct(x)
    d = sae.d_site_out
    out = []
    for t in range(sae.n_layers):
        yt, pt = y[:, t * d : (t + 1) * d], pred[:, t * d : (t + 1) * d]
        out.append(((pt - yt).pow(2).sum() / (yt - yt.mean(0)).pow(2).sum()).item())
    return out


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory, embedded_folder):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    cfg = GPT2Config(vocab_size=49152, n_embd=48, n_layer=3, n_head=4, n_positions=256, n_inner=96)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_clt_trains_through_the_loop_and_reopens(family, tmp_path, tiny_model_dir, tiny_gpt2_dir, text_corpus):
    from conftest import train_cfg

    from saelab.train.loop import train

    model_dir = tiny_model_dir if family == "llama" else tiny_gpt2_dir
    layers = [0, 1, 2]
    x, y, ins, outs = _heldout(model_dir, text_corpus, layers)
    pattern = f"{ins.split('+')[0].replace('.0.', '.{0,1,2}.')}->{outs.split('+')[0].replace('.0.', '.{0,1,2}.')}"
    cfg = train_cfg(
        tmp_path / "run", model_dir, text_corpus, arch="clt", hookpoints=[pattern], latents=64, k=[4], tokens=16384
    )
    (folder,) = train(cfg)
    sae = open_sae(folder).sae
    assert sae.cfg.hookpoint == ins and sae.cfg.out_hookpoint == outs
    assert (sae.n_layers, sae.n_per_layer, sae.cfg.d_sae) == (3, 64, 192)  # --dict-size is per layer
    untrained = make_clt(L=3, d=x.shape[1] // 3, n=64, k=4)
    untrained.init_from_data(x, y)
    trained_fvu, untrained_fvu = _fvu_per_layer(sae, x, y), _fvu_per_layer(untrained, x, y)
    for t, (a, b) in enumerate(zip(trained_fvu, untrained_fvu)):
        assert a < 0.95 * b, (t, a, b)  # 32 steps on a random model (a TopK transcoder per layer: FVU > 1)
    # every layer's latents fire k per token; the saved folder gives the same outputs when reopened again
    assert sae.encode_raw(x).values.gt(0).sum(1).float().mean() <= 3 * 4
    again = open_sae(folder).sae
    assert torch.equal(again.reconstruct(x), sae.reconstruct(x))


def test_clt_resume_after_a_kill_is_exact(tmp_path, tiny_model_dir, text_corpus):
    import sys

    from conftest import cli, kill_when_checkpointed

    common = ["train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus), "--arch", "clt"]
    common += ["--hookpoints", "model.layers.{0,1,2}.post_attention_layernorm->model.layers.{0,1,2}.mlp"]
    common += ["--dict-size", "64", "--k", "4", "--tokens", "16384", "--batch-tokens", "512", "--context", "64"]
    common += ["--buffer-batches", "4", "--checkpoint-every", "6000", "--threads", "1"]

    full = cli(common + ["--out", tmp_path / "full"])  # the runs not killed: in this process
    assert full.returncode == 0, full.stderr
    killed = kill_when_checkpointed(
        [sys.executable, "-m", "saelab", *common, "--out", str(tmp_path / "res")], tmp_path / "res"
    )
    assert killed == -9
    resumed = cli(common + ["--out", str(tmp_path / "res"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at" in resumed.stdout
    (name,) = [p.name for p in (tmp_path / "full").iterdir() if (p / "cfg.json").exists()]
    a, b = open_sae(tmp_path / "full" / name).sae, open_sae(tmp_path / "res" / name).sae
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_a_clt_too_big_for_memory_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """The embedded model's config is on disk: 30 layers x 2^20 latents per layer is refused in
    TrainingRun's checks, naming the estimate, before any weights load."""
    from conftest import train_cfg

    import saelab.train.sources as sources
    from saelab.errors import UserError
    from saelab.train.loop import TrainingRun

    monkeypatch.setattr(sources, "open_inputs", lambda *a, **k: pytest.fail("the model loaded"))
    pattern = "model.layers.{%s}.post_attention_layernorm->model.layers.{%s}.mlp" % (
        (",".join(map(str, range(30))),) * 2
    )
    cfg = train_cfg(tmp_path / "big", "embedded", "builtin", arch="clt", hookpoints=[pattern], latents=2**20, k=[32])
    with pytest.raises(UserError, match=r"--arch clt over 30 layers x 1048576 latents .* needs about"):
        TrainingRun(cfg)


def test_batchtopk_clt_trains_and_what_a_clt_refuses(tmp_path, tiny_model_dir, text_corpus):
    from conftest import train_cfg

    from saelab.errors import UserError
    from saelab.train.loop import train
    from saelab.train.plan import resolve

    pattern = "model.layers.{0,1}.post_attention_layernorm->model.layers.{0,1}.mlp"
    kw = dict(arch="clt", hookpoints=[pattern], latents=32, k=[4], tokens=4096, clt_sparsity="batchtopk")
    (folder,) = train(train_cfg(tmp_path / "run", tiny_model_dir, text_corpus, **kw))
    sae = open_sae(folder).sae
    assert sae.sparsity == "batchtopk" and (sae.threshold > 0).all()  # each layer's inference threshold (finalize)
    x = torch.randn(256, sae.cfg.d_in)
    assert 0 < sae.encode_raw(x).values.gt(0).sum() / 256 <= 2 * 32
    for bad, match in (
        (dict(init_from=str(folder)), "init-from"),
        (dict(skip=True), "skip"),
        (dict(hookpoints=["model.layers.{0,1}"]), "transcoder sites"),
        (dict(clt_sparsity="jumprelu"), "clt-sparsity"),
        (dict(loss="e2e"), "not supported"),
    ):
        with pytest.raises(UserError, match=match):
            resolve(train_cfg(tmp_path / "bad", tiny_model_dir, text_corpus, **(kw | bad)))
