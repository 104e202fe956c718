"""Crosscoders (docs/DICTIONARIES.md): one dictionary over several sites, trained through the one loop,
evaluated per site and spliced at every site at once; what it cannot do is refused."""

import pytest
import torch
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, load_sae, save_sae
from saelab.sae.foreign_saelens import export_saelens
from saelab.train.members import parse_sites

SITES = "model.layers.1+model.layers.2+model.layers.3"


def test_brace_expansion_of_hookpoints():
    assert parse_sites(["model.layers.{4,6,8}"]) == [(f"model.layers.{i}", None) for i in (4, 6, 8)]
    assert parse_sites(["l.{1,2}.mlp:input->l.{1,2}.mlp"]) == [
        ("l.1.mlp:input", "l.1.mlp"),
        ("l.2.mlp:input", "l.2.mlp"),
    ]
    assert parse_sites(["a.{x,y}.{1,2}"]) == [("a.x.1", None), ("a.x.2", None), ("a.y.1", None), ("a.y.2", None)]
    with pytest.raises(UserError, match="comma-separated"):
        parse_sites(["model.layers.{4}"])


def test_per_site_scales_fold_into_raw_weights_exactly(tmp_path):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(512, 8) * s for s in (1.0, 5.0, 30.0)], -1)  # three sites of very different norms
    sae = build_sae(SaeConfig("crosscoder", d_in=24, d_sae=32, hookpoint="a+b+c", k=4))
    sae.init_from_data(x, x)
    per_site = (x * sae.in_scale).view(-1, 3, 8).pow(2).sum(-1).mean(0)
    torch.testing.assert_close(per_site, torch.full((3,), 8.0))  # each site scaled to E||x_l||^2 = d
    folder = save_sae(sae, tmp_path / "cc", Provenance(model_spec="m", model_name="m", context=64))
    back, cfg = load_sae(folder)
    assert cfg["architecture"] == "crosscoder" and back.in_scale.eq(1).all()
    torch.testing.assert_close(back.reconstruct(x), sae.reconstruct(x), rtol=1e-5, atol=1e-4)
    assert torch.equal(back.encode_raw(x).indices.sort(1).values, sae.encode_raw(x).indices.sort(1).values)
    with pytest.raises(UserError, match="SAELens has no crosscoder"):
        export_saelens(back, tmp_path / "sl")


def test_selection_weights_preacts_by_summed_site_decoder_norms():
    torch.manual_seed(1)
    sae = build_sae(SaeConfig("crosscoder", d_in=12, d_sae=16, hookpoint="a+b", k=3))
    x = torch.randn(5, 12)
    lat, _, pre = sae.encode(x)
    score = pre.relu() * sae.W_dec.view(16, 2, 6).norm(dim=-1).sum(1)
    assert torch.equal(lat.indices.sort(1).values, score.topk(3, dim=1).indices.sort(1).values)
    torch.testing.assert_close(lat.values, pre.gather(1, lat.indices).relu())


def test_crosscoder_trains_in_the_loop_and_beats_random_at_every_site(tmp_path, tiny_model_dir, text_corpus):
    from saelab.data import load_token_rows
    from saelab.evaluate.crosscoder import crosscoder_metrics
    from saelab.evaluate.metrics import EvalBudget
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache_writer import write_latent_cache
    from saelab.features.steer import FeatureEdit, FeatureSteer
    from saelab.models import load_model
    from saelab.sae.splice import spliced
    from saelab.sinks import SinkConfig
    from saelab.train.loop import TrainingRun

    cfg = train_cfg(
        tmp_path / "cc",
        tiny_model_dir,
        text_corpus,
        arch="crosscoder",
        hookpoints=["model.layers.{1,2,3}"],
        tokens=4096,
        lr=[1e-2],
    )
    (folder,) = TrainingRun(cfg).run()
    sae, _ = load_sae(folder)
    assert sae.cfg.hookpoint == SITES and sae.cfg.d_in == 3 * 64
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    rand = build_sae(sae.cfg)
    budget = EvalBudget(tokens=1024, ce_tokens=128)
    m, r = (crosscoder_metrics(lm.model, lm.tokenizer, s, SinkConfig(), rows, budget) for s in (sae, rand))
    for site in SITES.split("+"):
        assert m["fvu_per_site"][site] < 0.7 * r["fvu_per_site"][site], (m["fvu_per_site"], r["fvu_per_site"])
    assert m["l0"] == pytest.approx(8) and m["fvu"] < 0.7 * r["fvu"]
    assert 0 < m["kl"] < r["kl"], (m["kl"], r["kl"])  # splicing every site: the trained one disturbs the model less
    # what it cannot do is refused with a reason
    with pytest.raises(UserError, match="latent cache"):
        write_latent_cache(
            LatentCacheConfig(sae_dirs=[str(folder)], tokens=128, out=str(tmp_path / "cache")), progress=False
        )
    with pytest.raises(UserError, match="cannot be spliced"):
        with spliced(lm.model, sae, error_term=True, edit=FeatureSteer([FeatureEdit(1, "add", 1.0)])):
            pass


def test_crosscoder_bad_input(tmp_path, tiny_model_dir, text_corpus):
    from saelab.train.loop import TrainingRun

    for kw, msg in [
        (dict(hookpoints=["model.layers.1->model.layers.2"]), "not transcoder sites"),
        (dict(loss="e2e"), "--loss local only"),
    ]:
        with pytest.raises(UserError, match=msg):
            train_cfg(tmp_path / "r", "no-such-model", "no-such-corpus", arch="crosscoder", **kw).validate()
    for hp, msg in [
        (["model.layers.1", "model.layers.1.mlp.act_fn"], "sites of one width"),
        (["model.layers.1"], "at least two hookpoints"),
    ]:
        with pytest.raises(UserError, match=msg):
            TrainingRun(
                train_cfg(tmp_path / hp[-1], tiny_model_dir, text_corpus, arch="crosscoder", hookpoints=hp)
            ).run()
