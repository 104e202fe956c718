"""The newer dictionary types (docs/DICTIONARIES.md): each is checked against the maths it claims,
on synthetic data with planted features, through the same objective the training loop uses."""

import json

import pytest
import torch
from conftest import cli, train_cfg

from saelab.errors import UserError
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, load_sae, save_sae
from saelab.sae.foreign_saelens import export_saelens
from saelab.sae.matryoshka import default_groups
from saelab.train.members import new_member
from saelab.train.objectives import LocalObjective
from saelab.train.sources import Batch

D, N_FEAT = 32, 96
HOOK = "model.layers.2"


def planted(n: int, seed: int = 0) -> torch.Tensor:
    """Rows that are sparse sums of N_FEAT unit features with Zipfian frequencies (a few common ones)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N_FEAT, D, generator=torch.Generator().manual_seed(123))
    feats /= feats.norm(dim=1, keepdim=True)
    p = 0.5 / torch.arange(1, N_FEAT + 1).float() ** 0.7
    on = torch.rand(n, N_FEAT, generator=g) < p
    mags = 1 + torch.rand(n, N_FEAT, generator=g)
    return (on * mags) @ feats


def train_local(
    sae,
    x: torch.Tensor,
    steps: int = 400,
    rows: int = 256,
    lr: float = 3e-3,
    dead: torch.Tensor | None = None,
    init: bool = True,
):
    """The local objective's loss, optimised as the loop does (Adam, decoder kept at unit norm);
    `dead` marks latents for AuxK (default none), `init=False` keeps the given weights."""
    m = new_member("t", sae, lr)
    obj = LocalObjective()
    if init:
        sae.init_from_data(x[:2048], x[:2048])
    sae.train()
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool) if dead is None else dead
    for s in range(steps):
        xb = x[(s * rows) % (len(x) - rows) :][:rows]
        r = obj.loss(m, Batch(acts={HOOK: xb}), None, dead)
        r.loss.backward()
        sae.remove_parallel_decoder_grad()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        sae.normalize_decoder()
    sae.finalize(x[:4096])
    return sae.eval()


def fvu(pred: torch.Tensor, x: torch.Tensor) -> float:
    return ((pred - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


# ---------------------------------------------------------------- Matryoshka BatchTopK
GROUPS = [8, 8, 16, 32]


def _prefix_fvus(sae, x):
    """FVU of each prefix alone, in raw space (latents beyond the prefix zeroed)."""
    lat = sae.encode_raw(x)
    dense = lat.to_dense()
    out = []
    for b in torch.tensor(GROUPS).cumsum(0).tolist():
        z = dense.clone()
        z[:, b:] = 0
        out.append(fvu((z @ sae.W_dec + sae.b_dec) / sae.out_scale, x))
    return out


def test_matryoshka_prefixes_each_reconstruct_and_beat_batchtopk_prefixes():
    x, held = planted(40_000), planted(4096, seed=1)
    cfg = dict(d_in=D, d_sae=sum(GROUPS), hookpoint=HOOK, k=4)
    torch.manual_seed(0)
    mat = train_local(build_sae(SaeConfig("matryoshka", groups=GROUPS, **cfg)), x)
    torch.manual_seed(0)
    btk = train_local(build_sae(SaeConfig("batchtopk", **cfg)), x)
    rand = build_sae(SaeConfig("matryoshka", groups=GROUPS, **cfg)).eval()
    rand.init_from_data(x[:2048], x[:2048])
    rand.finalize(x[:4096])
    pm, pb = _prefix_fvus(mat, held), _prefix_fvus(btk, held)
    # every prefix reconstructs on its own, better as it grows, and the full SAE beats a random one
    assert all(a > b for a, b in zip(pm, pm[1:])), pm
    assert pm[0] < 0.9 and pm[-1] < 0.5 * fvu(rand.reconstruct(held), held)
    # a plain BatchTopK's first latents are not a dictionary on their own; Matryoshka's are
    assert pm[0] < 0.85 * pb[0] and pm[1] < 0.85 * pb[1], (pm, pb)
    # ... at a full-dictionary FVU within reach of BatchTopK's (the paper: a small cost)
    assert pm[-1] < 1.5 * pb[-1] + 0.02, (pm, pb)


def test_matryoshka_loss_is_the_sum_of_prefix_fvus():
    x = planted(512)
    sae = build_sae(SaeConfig("matryoshka", d_in=D, d_sae=64, hookpoint=HOOK, k=4, groups=GROUPS)).train()
    sae.init_from_data(x, x)
    r = LocalObjective().loss(
        new_member("t", sae, 1e-3), Batch(acts={HOOK: x}), None, torch.zeros(64, dtype=torch.bool)
    )
    target = x * sae.out_scale
    dense = sae.encode(sae.encoder_input(x))[0].to_dense()
    want = 0.0
    for b in torch.tensor(GROUPS).cumsum(0).tolist():
        z = dense.clone()
        z[:, b:] = 0
        want += fvu(z @ sae.W_dec + sae.b_dec, target)
    assert r.loss.item() == pytest.approx(want, rel=1e-4)
    assert r.stats["arch_loss"] == pytest.approx(want - r.stats["fvu"], rel=1e-4)


def test_matryoshka_saves_in_inference_form_and_exports_to_saelens(tmp_path):
    x = planted(1024)
    sae = build_sae(SaeConfig("matryoshka", d_in=D, d_sae=64, hookpoint=HOOK, k=4, groups=GROUPS))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.init_from_data(x, x)
    sae.finalize(x)
    save_sae(sae, tmp_path / "m", Provenance(model_spec="x", model_name="tiny", context=64))
    mine, cfg = load_sae(tmp_path / "m")
    assert cfg["architecture"] == "jumprelu" and cfg["saelab"]["config"]["groups"] == GROUPS
    assert mine.cfg.arch == "matryoshka" and mine.cfg.groups == GROUPS
    torch.testing.assert_close(mine.reconstruct(x), sae.eval().reconstruct(x))
    export_saelens(mine, tmp_path / "sl", "tiny", 64)
    back, bcfg = load_sae(tmp_path / "sl")
    assert bcfg["architecture"] == "jumprelu"
    ref = mine.folded_state()
    for name, v in back.folded_state().items():
        torch.testing.assert_close(v, ref[name], rtol=1e-6, atol=0)
    torch.testing.assert_close(back.reconstruct(x), mine.reconstruct(x))


def test_default_groups_nest_to_the_dictionary():
    assert default_groups(4608) == [1152, 1152, 2304]
    assert sum(default_groups(100)) == 100 and min(default_groups(3)) >= 1


def test_arch_options_refused_before_model_loads(tmp_path):
    bad = [
        (dict(arch="topk", groups=[128, 128]), "--groups applies to --arch matryoshka"),
        (dict(arch="matryoshka", groups=[100, 100]), "sum to 200, not --dict-size 256"),
        (dict(arch="matryoshka", groups=[256, 0]), "positive"),
        (dict(arch="matryoshka", loss="e2e"), "--loss local only"),
        (dict(arch="topk", jumprelu_init_fire=0.05), "--jumprelu-init-fire applies to --arch jumprelu"),
        (dict(arch="jumprelu", jumprelu_init_fire=1.0), "between 0 and 1"),
        (dict(arch="jumprelu", gated_init_fire=0.01), "--gated-init-fire applies to --arch gated"),
        (dict(arch="gated", gated_init_fire=0.0), "between 0 and 1"),
    ]
    for kw, msg in bad:
        with pytest.raises(UserError, match=msg):
            train_cfg(tmp_path / "r", "no-such-model", "no-such-corpus", **kw).validate()
    train_cfg(tmp_path / "r", "m", "c", arch="matryoshka", groups=[64, 64, 128]).validate()
    train_cfg(tmp_path / "r", "m", "c", arch="jumprelu", jumprelu_init_fire=0.01).validate()
    train_cfg(tmp_path / "r", "m", "c", arch="gated", gated_init_fire=0.01).validate()


# ---------------------------------------------------------------- Gated SAE
def saelens_gated(t: dict, x: torch.Tensor, apply_b_dec: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated SAE's inference from the paper's equations (as SAELens' GatedSAE), on SAELens tensors."""
    sae_in = x - t["b_dec"] if apply_b_dec else x
    active = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
    mags = torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    f = active * mags
    return f, f @ t["W_dec"] + t["b_dec"]


def _random_gated(x, d_sae=64):
    sae = build_sae(SaeConfig("gated", d_in=D, d_sae=d_sae, hookpoint=HOOK, sparsity_coeff=0.1))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.init_from_data(x, x)  # non-unit scales: the folding must be exact
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.r_mag.copy_(0.3 * torch.randn(d_sae, generator=g))
        sae.b_mag.copy_(0.2 * torch.randn(d_sae, generator=g))
        sae.b_enc.copy_(0.2 * torch.randn(d_sae, generator=g))
    return sae.eval()


def test_gated_inference_equals_saelens_equations_and_roundtrips_exactly(tmp_path):
    from safetensors.torch import load_file

    x = planted(512)
    sae = _random_gated(x)
    save_sae(sae, tmp_path / "g", Provenance(model_spec="x", model_name="tiny", context=64))
    mine, cfg = load_sae(tmp_path / "g")
    assert cfg["architecture"] == "gated" and mine.cfg.arch == "gated"
    export_saelens(mine, tmp_path / "sl", "tiny", 64)
    t = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert set(t) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}  # SAELens' gated names
    f, recon = saelens_gated(t, x)
    assert 0 < (f > 0).float().mean() < 1  # both paths matter here
    torch.testing.assert_close(mine.encode_raw(x).to_dense(), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.reconstruct(x), recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), recon, rtol=1e-5, atol=1e-5)
    back, bcfg = load_sae(tmp_path / "sl")  # SAELens -> ours: exact
    assert bcfg["saelab"]["imported_from"]["format"] == "saelens" and back.cfg.arch == "gated"
    ref = mine.folded_state()
    assert all(torch.equal(v, ref[n]) for n, v in back.folded_state().items())
    export_saelens(back, tmp_path / "sl2", "tiny", 64)  # and out again: identical
    t2 = load_file(str(tmp_path / "sl2" / "sae_weights.safetensors"))
    assert all(torch.equal(t2[n], t[n]) for n in t)


def test_saelens_gated_without_input_centring_imports_exactly(tmp_path):
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(2)
    t = {
        "W_enc": torch.randn(D, 48, generator=g) / 4,
        "b_gate": torch.randn(48, generator=g) / 4,
        "r_mag": torch.randn(48, generator=g) / 4,
        "b_mag": torch.randn(48, generator=g) / 4,
        "W_dec": torch.randn(48, D, generator=g) / 4,
        "b_dec": torch.randn(D, generator=g),
    }
    (tmp_path / "sl").mkdir()
    save_file(t, str(tmp_path / "sl" / "sae_weights.safetensors"))
    (tmp_path / "sl" / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "gated",
                "d_in": D,
                "d_sae": 48,
                "dtype": "float32",
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "metadata": {"hook_name": "blocks.2.hook_resid_post", "model_name": "m"},
            }
        )
    )
    sae, _ = load_sae(tmp_path / "sl")
    x = planted(256)
    f, recon = saelens_gated(t, x, apply_b_dec=False)
    torch.testing.assert_close(sae.encode_raw(x).to_dense(), f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), recon, rtol=1e-4, atol=1e-5)
    del t["r_mag"]
    save_file(t, str(tmp_path / "sl" / "sae_weights.safetensors"))
    with pytest.raises(UserError, match="r_mag"):
        load_sae(tmp_path / "sl")


def test_gated_auxiliary_loss_trains_the_gate_through_a_frozen_decoder():
    x = planted(256)
    sae = _random_gated(x).train()
    target = x * sae.out_scale
    out = sae(x, target=target)
    gate = (sae.encoder_input(x) - sae.b_dec) @ sae.W_enc + sae.b_enc
    via_gate = gate.relu() @ sae.W_dec + sae.b_dec
    want = ((via_gate - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()).item()
    assert out.extra_loss.item() == pytest.approx(want, rel=1e-5)
    out.extra_loss.backward()  # the auxiliary term: gate path only, decoder frozen
    assert sae.W_dec.grad is None and sae.r_mag.grad is None and sae.b_mag.grad is None
    # (b_dec still learns here, as in SAELens, through the centring of the gate's input only)
    torch.testing.assert_close(sae.b_dec.grad, -(sae.W_enc @ sae.b_enc.grad))
    assert sae.b_enc.grad.abs().sum() > 0 and sae.W_enc.grad.abs().sum() > 0
    sae.zero_grad(set_to_none=True)
    out = sae(x, target=target)
    (out.recon - target).pow(2).sum().backward()  # the reconstruction: no gradient through the gate
    assert sae.b_enc.grad is None or sae.b_enc.grad.abs().sum() == 0
    assert sae.r_mag.grad.abs().sum() > 0 and sae.b_mag.grad.abs().sum() > 0


def test_gated_learns_planted_features():
    x, held = planted(40_000), planted(4096, seed=1)
    torch.manual_seed(0)
    sae = train_local(build_sae(SaeConfig("gated", d_in=D, d_sae=64, hookpoint=HOOK, sparsity_coeff=0.1)), x)
    rand = build_sae(sae.cfg).eval()
    rand.init_from_data(x[:2048], x[:2048])
    l0 = sae.encode_raw(held).l0_per_row().float().mean().item()
    f, f_rand = fvu(sae.reconstruct(held), held), fvu(rand.reconstruct(held), held)
    assert f < 0.35 * f_rand and f < 0.35, (f, f_rand)
    assert 2 < l0 < 15, l0


# ---------------------------------------------------------------- through the one loop, eval and the latent cache
@pytest.mark.parametrize(
    "arch,extra", [("matryoshka", {"groups": [32, 32, 64, 128]}), ("gated", {"sparsity_coeff": [0.1]})]
)
def test_new_types_train_in_the_loop_and_work_downstream(tmp_path, tiny_model_dir, text_corpus, arch, extra):
    from saelab.data import load_token_rows
    from saelab.evaluate.metrics import EvalBudget, reconstruction_metrics
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache import LatentCache
    from saelab.features.latent_cache_writer import write_latent_cache
    from saelab.models import load_model
    from saelab.storage import read_json
    from saelab.train.loop import TrainingRun

    cfg = train_cfg(tmp_path / arch, tiny_model_dir, text_corpus, arch=arch, tokens=32768, **extra)
    (folder,) = TrainingRun(cfg).run()
    sae, c = load_sae(folder)
    assert sae.cfg.arch == arch and c["saelab"]["config"]["groups"] == extra.get("groups")
    assert "arch_loss" in read_json(tmp_path / arch / "manifest.json")["saes"][folder.name]["final"]
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    rand = build_sae(sae.cfg)
    (r, rr), _ = reconstruction_metrics(lm.model, lm.tokenizer, [(sae, {}), (rand, {})], rows, EvalBudget(tokens=4096))
    assert r["fvu"] < 0.7 * rr["fvu"] and 0 < r["l0"] < 128, (r.fvu, r.l0, rr.fvu)
    cache = LatentCache.open(
        write_latent_cache(
            LatentCacheConfig(
                sae_dirs=[str(folder)],
                tokens=64 * 8,
                out=str(tmp_path / "cache"),
                batch_rows=4,
                chunk_rows=8,
                shard_size=64,
            ),
            progress=False,
        )
    )
    (name,) = cache.sae_names
    assert cache.d_sae(name) == sae.cfg.d_sae and cache.fire_counts(name).sum() > 0


# ---------------------------------------------------------------- skip transcoder
MLP_IN, MLP_OUT = "model.layers.1.post_attention_layernorm", "model.layers.1.mlp"


@pytest.fixture(scope="module")
def mlp_io(tiny_model_dir, text_corpus):
    """(input, output) of the tiny Llama's layer-1 MLP on ~1.5k positions."""
    from saelab.models import collect_activations, load_model

    lm = load_model(str(tiny_model_dir))
    ids = lm.tokenizer(text_corpus.read_text()[:20000], return_tensors="pt").input_ids[:, :1536].view(6, 256)
    acts = collect_activations(lm.model, ids, [MLP_IN, MLP_OUT])
    return acts[MLP_IN].reshape(-1, 64).float(), acts[MLP_OUT].reshape(-1, 64).float()


def test_skip_initialised_to_the_best_linear_fit_beats_a_transcoder_at_init(mlp_io):
    x, y = mlp_io
    fit_x, fit_y, ev_x, ev_y = x[:1024], y[:1024], x[1024:], y[1024:]
    out = {}
    for skip in (False, True):
        tc = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint=MLP_IN, out_hookpoint=MLP_OUT, k=8, skip=skip))
        tc.reset_parameters(torch.Generator().manual_seed(0))
        tc.init_from_data(fit_x, fit_y, "mean")
        out[skip] = fvu(tc.eval().reconstruct(ev_x), ev_y)
        if not skip:  # the plain transcoder with the skip transcoder's quiet encoder, too
            tc.W_enc.data *= 0.1
            out["quiet"] = fvu(tc.reconstruct(ev_x), ev_y)
    # the least-squares map alone, in raw space, for reference
    xc, yc = fit_x - fit_x.mean(0), fit_y - fit_y.mean(0)
    w = torch.linalg.lstsq(xc, yc).solution
    lin = fvu((ev_x - fit_x.mean(0)) @ w + fit_y.mean(0), ev_y)
    assert lin < 0.9  # the MLP has a linear part worth skipping
    assert out[True] < min(out[False], out["quiet"]) - 0.08 and out[True] < lin + 0.05, (out, lin)


def _skip_tc(x, arch="topk", k=8):
    c = SaeConfig(arch, d_in=64, d_sae=128, hookpoint=f"{MLP_OUT}:input", out_hookpoint=MLP_OUT, k=k, skip=True)
    tc = build_sae(c)
    tc.reset_parameters(torch.Generator().manual_seed(0))
    tc.init_from_data(x, x * 0.5 + 0.1)  # non-unit, different in/out scales: folding must be exact
    with torch.no_grad():
        tc.W_skip.add_(0.01 * torch.randn(tc.W_skip.shape, generator=torch.Generator().manual_seed(3)))
    return tc.eval()


def test_skip_transcoder_roundtrips_through_sparsify_exactly(tmp_path, mlp_io):
    from safetensors.torch import load_file

    from saelab.sae.foreign_sparsify import export_sparsify

    x = mlp_io[0]
    tc = _skip_tc(x)
    save_sae(tc, tmp_path / "tc", Provenance(model_spec="x", model_name="tiny", context=64))
    mine, _ = load_sae(tmp_path / "tc")
    export_sparsify(mine, tmp_path / "sp")
    folder = tmp_path / "sp" / "layers.1.mlp"
    t = load_file(str(folder / "sae.safetensors"))
    # sparsify's forward: top-k of relu(x @ enc.T + b) decoded, plus x @ W_skip.T (x not centred: transcoder)
    pre = (x @ t["encoder.weight"].t() + t["encoder.bias"]).relu()
    v, i = pre.topk(8, dim=-1)
    want = torch.zeros_like(pre).scatter(1, i, v) @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].t()
    torch.testing.assert_close(mine.reconstruct(x), want, rtol=1e-4, atol=1e-5)
    back, cfg = load_sae(folder)
    assert back.cfg.skip and cfg["saelab"]["imported_from"]["cfg"]["skip_connection"] is True
    ref = mine.folded_state()
    assert set(back.folded_state()) == set(ref) and all(torch.equal(v, ref[n]) for n, v in back.folded_state().items())


def test_skip_transcoder_roundtrips_through_saelens_exactly(tmp_path, mlp_io):
    import json

    from safetensors.torch import load_file

    x = mlp_io[0]
    tc = _skip_tc(x, arch="relu", k=None)
    export_saelens(tc, tmp_path / "sl", "tiny", 64)
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["architecture"] == "skip_transcoder" and cfg["hook_name_out"] == MLP_OUT and cfg["d_out"] == 64
    t = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    # SAELens SkipTranscoder: relu(x @ W_enc + b_enc) @ W_dec + b_dec + x @ W_skip.T
    want = (x @ t["W_enc"] + t["b_enc"]).relu() @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].t()
    torch.testing.assert_close(tc.reconstruct(x), want, rtol=1e-4, atol=1e-5)
    back, _ = load_sae(tmp_path / "sl")
    assert back.cfg.skip and back.cfg.out_hookpoint == MLP_OUT
    ref = tc.folded_state()
    assert all(torch.equal(v, ref[n]) for n, v in back.folded_state().items())
    with pytest.raises(UserError, match="ReLU transcoders"):
        export_saelens(_skip_tc(x), tmp_path / "bad")


def test_skip_transcoder_trains_in_the_loop_and_beats_a_transcoder(tmp_path, tiny_model_dir, text_corpus):
    from saelab.data import load_token_rows
    from saelab.evaluate.metrics import EvalBudget, reconstruction_metrics
    from saelab.models import load_model
    from saelab.train.loop import TrainingRun

    site = f"{MLP_IN}->{MLP_OUT}"
    saes = []
    for skip in (False, True):
        cfg = train_cfg(tmp_path / f"s{skip}", tiny_model_dir, text_corpus, hookpoints=[site], tokens=16384, skip=skip)
        (folder,) = TrainingRun(cfg).run()
        assert folder.name.endswith("-topk-skip-k8" if skip else "-topk-k8")
        saes.append(load_sae(folder)[0])
    assert saes[1].cfg.skip and not saes[0].cfg.skip
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    (plain, skip), _ = reconstruction_metrics(
        lm.model, lm.tokenizer, [(s, {}) for s in saes], rows, EvalBudget(tokens=4096)
    )
    assert skip["fvu"] < 0.9 * plain["fvu"], (skip["fvu"], plain["fvu"])
    with pytest.raises(UserError, match="--skip applies to transcoders"):
        train_cfg(tmp_path / "x", "m", "c", skip=True).validate()


# ---------------------------------------------------------------- data-parallel torchrun
def _gated_skip_torchrun(tiny_model_dir, text_corpus):
    import os
    import sys

    base = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--corpus",
        str(text_corpus),
        "--dict-size",
        "128",
        "--tokens",
        "4096",
        "--batch-tokens",
        "512",
        "--context",
        "64",
        "--buffer-batches",
        "4",
        "--lr",
        "2e-3",
        "3e-3",
        "--threads",
        "1",
        "--dead-tokens",
        "1000000000",
        "--arch",
        "gated",
        "--sparsity-coeff",
        "0",
        "--skip",
        "--hookpoints",
        f"{MLP_IN}->{MLP_OUT}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return base, env, torchrun


def test_gated_refuses_inexact_data_parallel(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    """Data-parallel training of a gated SAE did not give the single-process weights (its L1 term is
    a mean over each rank's rows; measured: W_enc differed), so it is refused with a clear error.
    (A skip transcoder alone matches one process: tests/test_distributed.py.) The refusal comes before
    any process group forms, so one rank's view of a 2-process job (WORLD_SIZE=2) shows what torchrun prints."""
    base, _, _ = _gated_skip_torchrun(tiny_model_dir, text_corpus)
    monkeypatch.setenv("WORLD_SIZE", "2")  # no RANK / MASTER_ADDR: reaching the process group would crash
    r = cli([*base, "--out", tmp_path / "data"])
    assert r.returncode == 2 and "--distributed modules" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "data").exists()


def test_hookpoint_order_is_rank_independent(tiny_model_dir):
    """Two sites of one block come out in one order whatever order (a set's, per process) they arrive
    in: torchrun ranks that disagreed swapped the transcoder's input and output in the exchange."""
    from saelab.models import depth_order, load_model

    model = load_model(str(tiny_model_dir)).model
    want = ["model.layers.0.mlp", MLP_OUT, MLP_IN]
    assert depth_order(model, [MLP_IN, MLP_OUT, "model.layers.0.mlp"]) == want
    assert depth_order(model, [MLP_OUT, "model.layers.0.mlp", MLP_IN, MLP_OUT]) == want


def test_gated_and_skip_train_module_parallel(tmp_path, tiny_model_dir, text_corpus):
    """Module-parallel torchrun (each rank trains whole SAEs on full batches) gives the single-process
    weights, extra parameters (r_mag, b_mag, W_skip) included.

    Compared by each tensor's relative error, not element by element: the two runs differ by float
    rounding (~1e-7), and a gate whose pre-activation lies within that of zero opens in one run and
    not the other. Measured: such a flip moved one W_enc entry by 2.5e-4 (a CI failure under the old
    elementwise atol 2e-4) and W_enc by up to 7e-4 relative; the other SAE of the same run (another
    lr, so the result of training on anything else) differs by 0.026 (b_dec) to 3.1 relative."""
    import subprocess

    base, env, torchrun = _gated_skip_torchrun(tiny_model_dir, text_corpus)
    outs = {n: tmp_path / f"n{n}" for n in (1, 2)}
    r = cli([*base, "--distributed", "modules", "--out", outs[1]])  # one process: this one
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(
        torchrun + ["-m", "saelab.cli", *base, "--distributed", "modules", "--out", str(outs[2])],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in outs[1].iterdir() if p.is_dir())
    assert len(names) == 2
    runs = [json.loads((outs[n] / "manifest.json").read_text()) for n in (1, 2)]
    assert runs[0]["data"] == runs[1]["data"] and runs[0]["lm_tokens"] == runs[1]["lm_tokens"]  # same data seen
    for name in names:
        wa, wb = (load_sae(outs[n] / name)[0].folded_state() for n in (1, 2))
        assert {"r_mag", "b_mag", "W_skip"} <= set(wa)
        for k in wa:
            rel = ((wb[k] - wa[k]).norm() / wa[k].norm()).item()
            assert rel < 5e-3, f"{name} {k}: relative error {rel:.2e} between 1 and 2 ranks"


# ---------------------------------------------------------------- JumpReLU's start (short runs)
def test_jumprelu_thresholds_start_from_the_data_with_the_papers_bandwidth_scaled():
    """Each threshold starts at its latent's upper 10% quantile on the first batch, so every latent fires
    on 10% of it (the constant 0.001 left runs of a few hundred steps a dense ReLU: docs/research/eval.md); the STE
    width is the paper's 0.001 (unit mean squared norm) times sqrt(d_in), our inputs' scale."""
    x = planted(4096) * 7 + 3  # off unit scale: the quantile is taken in the scaled training space
    sae = build_sae(SaeConfig("jumprelu", d_in=D, d_sae=64, hookpoint=HOOK, sparsity_coeff=0.01))
    sae.init_from_data(x, x)
    fire = sae.encode_raw(x).to_dense().gt(0).float().mean(0)
    assert (fire - 0.1).abs().max() <= 1 / 4096, fire
    assert sae.bandwidth() == pytest.approx(0.001 * D**0.5)
    const = build_sae(SaeConfig("jumprelu", d_in=D, d_sae=64, hookpoint=HOOK, jumprelu_init_fire=None))
    const.init_from_data(x, x)  # None keeps the paper's constant start
    assert torch.allclose(const.log_threshold.exp(), torch.full((64,), 0.001))
