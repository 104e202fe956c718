"""Seed stability (`saelab seeds`, study/seeds.py + seed_match.py): planted copies of a dictionary with a
known fraction of latents replaced give that fraction; identical -> 1.0; random -> ~0; an encoder that
fires on other tokens behind the same decoder directions is caught by the activation correlation."""

import numpy as np
import pytest
import torch

from saelab.cli import main
from saelab.errors import UserError
from saelab.evaluate.seed_match import CodeMoments, PairMoments, best_matches, stability
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.storage import read_json
from saelab.study.seeds import SeedsConfig, seed_stability


def _unit(n, d, g):
    w = torch.randn(n, d, generator=g)
    return w / w.norm(dim=1, keepdim=True)


def _replaced(w, frac, g):
    """w with its rows permuted, rescaled and `frac` of them replaced by fresh random directions."""
    n = w.shape[0]
    b = w.clone() * 2.5
    b[: int(frac * n)] = _unit(int(frac * n), w.shape[1], g)
    return b[torch.randperm(n, generator=g)]


@pytest.mark.parametrize("frac", [0.0, 0.25, 0.6])
def test_known_fraction_replaced_gives_that_fraction(frac):
    g = torch.Generator().manual_seed(1)
    a = _unit(400, 64, g)
    b = _replaced(a, frac, g)
    cos, idx = best_matches(a, b / b.norm(dim=1, keepdim=True), block=128)
    s = stability(cos)["all"]
    assert s["n"] == 400 and s["frac_matched"] == pytest.approx(1 - frac, abs=1e-9)
    assert torch.allclose(b[idx[cos > 0.99]] / 2.5, a[cos > 0.99], atol=1e-6)  # the match is the copied row itself


def test_random_dictionaries_match_almost_nothing():
    g = torch.Generator().manual_seed(2)
    cos, _ = best_matches(_unit(500, 64, g), _unit(500, 64, g))
    assert stability(cos)["all"]["frac_matched"] < 0.01


def test_correlation_and_bands_against_numpy():
    g = torch.Generator().manual_seed(3)
    n, d = 20000, 6
    fires = [0, 1, 10, 100, 1000, 10000]  # densities 0, 5e-5, 5e-4, 5e-3, 5e-2, 0.5: one latent per band
    a = torch.zeros(n, d)
    for i, f in enumerate(fires):
        a[torch.randperm(n, generator=g)[:f], i] = torch.rand(f, generator=g) + 0.1
    idx = torch.tensor([5, 4, 3, 2, 1, 0])
    b = torch.zeros(n, d)
    b[:, idx] = a + 0.3 * torch.randn(n, d, generator=g) * (a > 0)  # noisy copies, permuted
    ma, mb, pm = CodeMoments(d), CodeMoments(d), PairMoments(idx)
    for s in range(0, n, 7000):  # streamed in chunks
        ma.add(a[s : s + 7000])
        mb.add(b[s : s + 7000].clamp_min(0))
        pm.add(a[s : s + 7000], b[s : s + 7000].clamp_min(0))
    r = pm.correlation(ma, mb)
    assert torch.isnan(r[0])  # never fires: no correlation, so never matched
    bb = b.clamp_min(0)
    for i in range(1, d):
        assert r[i].item() == pytest.approx(np.corrcoef(a[:, i], bb[:, idx[i]])[0, 1], abs=1e-5)
    dens = ma.density().float()
    assert dens.tolist() == pytest.approx([f / n for f in fires])
    cos = torch.ones(d)
    res = stability(cos, r, dens, corr_threshold=0.7, tokens=n)
    assert [v["n"] for v in res["bands"].values()] == [1, 1, 1, 1, 1, 1]
    assert [v.get("median_fires") for v in res["bands"].values()] == [0, 1, 10, 100, 1000, 10000]
    assert res["all"]["n"] == 5  # alive latents only
    want = float((r[1:] >= 0.7).float().mean())
    assert res["all"]["frac_matched"] == pytest.approx(want) and res["all"]["frac_matched_decoder"] == 1.0


def _sae(tmp_path, name, w_enc, w_dec, model_dir, corpus, site="model.layers.1", b_enc=None):
    sae = build_sae(SaeConfig("relu", d_in=w_dec.shape[1], d_sae=w_dec.shape[0], hookpoint=site))
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_enc.T)
        if b_enc is not None:
            sae.b_enc.copy_(b_enc)
    prov = Provenance(model_spec=str(model_dir), model_name=str(model_dir), corpus=str(corpus), context=64)
    return str(save_sae(sae, tmp_path / name, prov))


def test_seeds_command_on_a_tiny_model(tmp_path, tiny_model_dir, text_corpus, capsys):
    g = torch.Generator().manual_seed(0)
    w = _unit(96, 64, g)
    perm = torch.randperm(96, generator=g)
    bias = torch.cat([torch.zeros(80), torch.full((16,), -1e6)])  # 16 latents that never fire
    a = _sae(tmp_path, "a", w, w, tiny_model_dir, text_corpus, b_enc=bias)
    copy = _sae(tmp_path, "copy", w[perm], w[perm], tiny_model_dir, text_corpus, b_enc=bias[perm])  # reordered
    part = _replaced(w, 0.25, torch.Generator().manual_seed(5))
    quarter = _sae(tmp_path, "quarter", part, part, tiny_model_dir, text_corpus)
    rand = _unit(96, 64, g)
    other = _sae(tmp_path, "other", rand, rand, tiny_model_dir, text_corpus)
    # the same decoder directions behind encoders that read other directions
    shuffled = _sae(tmp_path, "shuffled", w[perm], w, tiny_model_dir, text_corpus, b_enc=bias[perm])

    r = seed_stability(SeedsConfig(folders=[a, copy, quarter, other], tokens=0))
    by = {(p["a"].split()[0], p["b"].split()[0]): p["all"] for p in r["pairs"]}
    assert len(r["pairs"]) == 12 and by[("a", "copy")]["frac_matched"] == 1.0
    assert by[("a", "quarter")]["frac_matched"] == pytest.approx(0.75)
    assert by[("a", "other")]["frac_matched"] < 0.05 and "bands" not in by[("a", "other")]
    with pytest.raises(UserError, match="exists"):
        seed_stability(SeedsConfig(folders=[a, copy], tokens=0))

    assert main(["seeds", a, copy, shuffled, "--tokens", "1024", "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "activation correlation" in printed and "a (relu) -> copy (relu): 100.0% (decoder alone 100.0%)" in printed
    r = read_json(tmp_path / "s" / "seeds.json")
    by = {(p["a"].split()[0], p["b"].split()[0]): p for p in r["pairs"]}
    same = by[("a", "copy")]
    assert r["tokens"] > 0 and same["all"]["n"] == 80 and same["bands"]["dead"]["n"] == 16  # alive latents only
    assert same["all"]["frac_matched"] == 1.0 and same["all"]["median_correlation"] == pytest.approx(1.0, abs=1e-5)
    assert sum(v["n"] for v in same["bands"].values()) == 96 and "dead: 16" in printed
    sh = by[("a", "shuffled")]["all"]
    assert sh["frac_matched_decoder"] == 1.0 and sh["frac_matched"] < 0.3  # decoders agree, activations do not


def test_seeds_refusals(tmp_path, tiny_model_dir, text_corpus):
    g = torch.Generator().manual_seed(0)
    w = _unit(32, 64, g)
    a = _sae(tmp_path, "a", w, w, tiny_model_dir, text_corpus)
    wrong = _sae(tmp_path, "wrong", w, w, tiny_model_dir, text_corpus, site="model.layers.2")
    with pytest.raises(UserError, match="same site"):
        seed_stability(SeedsConfig(folders=[a, wrong], tokens=0))
    with pytest.raises(UserError, match="two or more"):
        seed_stability(SeedsConfig(folders=[a], tokens=0))
    with pytest.raises(UserError, match="twice"):
        seed_stability(SeedsConfig(folders=[a, a], tokens=0))
    with pytest.raises(UserError, match="cos"):
        seed_stability(SeedsConfig(folders=[a, wrong], cos_threshold=1.5))


def test_bench_metric_seeds(tmp_path, tiny_model_dir, text_corpus):
    g = torch.Generator().manual_seed(0)
    w = _unit(96, 64, g)
    perm = torch.randperm(96, generator=g)
    a = _sae(tmp_path, "a", w, w, tiny_model_dir, text_corpus)
    copy = _sae(tmp_path, "copy", w[perm], w[perm], tiny_model_dir, text_corpus)
    rand = _unit(96, 64, g)
    other = _sae(tmp_path, "other", rand, rand, tiny_model_dir, text_corpus)
    out = tmp_path / "bench"
    argv = ["bench", a, copy, other, "--out", str(out), "--metrics", "seeds", "--tokens", "512", "--ce-tokens", "0"]
    assert main(argv) == 0
    js = read_json(out / "seeds.json")
    by = {(p["a"], p["b"]): p["all"] for p in js["pairs"]}
    assert js["tokens"] > 0 and len(by) == 6 and by[("a", "copy")]["frac_matched"] == 1.0
    assert by[("a", "other")]["frac_matched"] < 0.05
    md = (out / "report.md").read_text()
    assert "## Seeds" in md and "| a | copy | 1.000 | 1.000 |" in md
    one = tmp_path / "one"
    assert main(["bench", a, "--out", str(one), "--metrics", "seeds", "--tokens", "256", "--ce-tokens", "0"]) == 0
    assert read_json(one / "seeds.json")["pairs"] == [] and "needs two or more" in (one / "report.md").read_text()
