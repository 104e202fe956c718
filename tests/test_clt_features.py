"""A cross-layer transcoder's latents as features, stage by stage on the tiny llama: a CLT replacement folder
-> `saelab cache` (one dictionary of L*n latents) -> `explain --explainer stats` / `score` -> the feature
store's page data and HTML -> steering. Each seam checks that the next stage shows what the previous wrote:
the cached top activation of a latent is encode_layer on that token's input, the cached decoder norms and
the page's are clt.decoder_norms(), an unedited steered run is bitwise the clean model, and a steered
latent changes the MLP output of every layer from its own on, by exactly its decoders, and none before."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from circuit_helpers import tiny_clt, tiny_plt
from view_helpers import SMALL_EXAMPLES

from saelab.cli import main
from saelab.errors import UserError
from saelab.families import family_of
from saelab.features.clt_features import own_decoders, summed_decoders
from saelab.features.latent_cache import LatentCache
from saelab.features.steer import FeatureEdit, FeatureSteer, _cache_kwarg, steering_context
from saelab.models import collect_activations, load_model
from saelab.sae.clt import CrossLayerTranscoder
from saelab.sae.folder import open_sae, save_sae
from saelab.sae.replacement import open_replacement
from saelab.train.layers import layer_plan

N, K, D = 32, 4, 64  # latents per layer, active per layer, the tiny llama's width


@pytest.fixture(scope="module")
def clt_run(tmp_path_factory, tiny_model_dir, text_corpus):
    """A random CLT over the tiny llama's 4 MLPs (decoders of norm 3 per target, so edits show), saved as a
    replacement folder of kind clt."""
    out = tiny_clt(tiny_model_dir, tmp_path_factory.mktemp("clt") / "run", N, K, bias=0.0, corpus=text_corpus)
    f = open_sae(out / "clt")
    L = f.sae.n_layers
    with torch.no_grad():
        for l, w in enumerate(f.sae.W_dec):  # [L-l, n, d]: target t gets norm 3 / (1 + t - l), strongest at l
            w.div_(w.norm(dim=-1, keepdim=True)).mul_(3.0 / torch.arange(1, L - l + 1.0)[:, None, None])
    save_sae(f.sae, out / "clt", f.provenance)
    return out


@pytest.fixture(scope="module")
def cached(clt_run, tmp_path_factory):
    cache = tmp_path_factory.mktemp("clt_cache") / "cache"
    assert main(["cache", str(clt_run), "--tokens", "2048", "--out", str(cache)]) == 0
    return LatentCache.open(cache)


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _clt(run):
    return open_replacement(run).dictionaries[0]


def test_clt_is_cacheable_and_a_crosscoder_still_is_not():
    assert CrossLayerTranscoder.capabilities.latent_cache
    from saelab.sae.registry import kind_of

    assert not kind_of("crosscoder").capabilities.latent_cache


# ------------------------------------------------------------ cache


def test_cache_holds_one_dictionary_of_every_layers_latents(cached, clt_run, lm):
    rep = open_replacement(clt_run)
    clt = rep.dictionaries[0]
    assert cached.sae_names == ["clt"]
    info = cached.info("clt")
    assert info["d_sae"] == 4 * N and info["hookpoint"] == "+".join(rep.input_sites)
    assert info["clt"] == {
        "n_layers": 4,
        "n_per_layer": N,
        "input_sites": rep.input_sites,
        "output_sites": rep.output_sites,
    }
    assert set(rep.input_sites) <= set(cached.manifest["hookpoints"])  # every layer's input, one forward
    # the recorded decoder: each latent's decoder into its own layer; the norms: clt.decoder_norms()
    dec = cached.decoder("clt")
    for g in (0, N + 5, 3 * N + 31):
        assert torch.allclose(dec[g], clt.decoder_vectors(torch.tensor([g]), g // N)[0])
    assert torch.equal(cached.decoder_norms("clt"), clt.decoder_norms().float())
    assert torch.allclose(
        cached.decoder_norms("clt").gather(1, torch.arange(4 * N)[:, None] // N)[:, 0], dec.norm(dim=1)
    )
    assert cached.steer_site("clt", N + 3) == rep.output_sites[1] and cached.steer_site("clt", 0) == rep.output_sites[0]
    # every layer's latents fire, about K per layer per recorded position
    fires = cached.fire_counts("clt").reshape(4, N).sum(1)
    n_pos = cached.manifest["n_positions"]
    assert all(K * n_pos * 0.5 <= f <= K * n_pos for f in fires)
    # the seam: a latent's cached top activation is encode_layer on that token's MLP input, for each layer
    for layer in range(4):
        g = layer * N + int(np.argmax(cached.fire_counts("clt")[layer * N : (layer + 1) * N]))
        rows, pos, vals = cached.latent_records("clt", g)
        i = int(np.argmax(vals))
        ids = torch.from_numpy(cached.tokens[rows[i]][None].astype(np.int64))
        site = rep.input_sites[layer]
        x = collect_activations(lm.model, ids, [site])[site][0, pos[i]][None]
        with torch.no_grad():
            dense = clt.encode_layer(layer, x).to_dense()[0]
        assert float(vals[i]) == pytest.approx(float(dense[g % N]), rel=1e-5, abs=1e-6)
        assert float(vals[i]) == pytest.approx(float(cached.max_activation("clt")[g]))
        assert not cached.excluded[rows, pos].any()


def test_the_clt_folder_itself_caches_the_same(cached, clt_run, tmp_path):
    out = tmp_path / "c2"
    assert main(["cache", str(clt_run / "clt"), "--tokens", "2048", "--out", str(out)]) == 0
    lc = LatentCache.open(out)
    assert np.array_equal(lc.fire_counts("clt"), cached.fire_counts("clt"))
    assert np.array_equal(lc.max_activation("clt"), cached.max_activation("clt"))


def test_a_plt_replacement_folder_caches_each_layer(tmp_path, tiny_model_dir, text_corpus):
    plan = layer_plan(str(tiny_model_dir), "all")
    tiny_plt(tiny_model_dir, tmp_path / "plt", n=16, k=2, bias=0.0, corpus=text_corpus)
    assert main(["cache", str(tmp_path / "plt"), "--tokens", "1024", "--out", str(tmp_path / "c")]) == 0
    lc = LatentCache.open(tmp_path / "c")
    assert lc.sae_names == [f"layer{l}" for l in range(4)]
    assert [lc.info(n)["hookpoint"] for n in lc.sae_names] == list(plan.input_sites)
    assert [lc.info(n)["steer_hookpoint"] for n in lc.sae_names] == list(plan.output_sites)
    assert lc.decoder_norms("layer0") is None and all(lc.fire_counts(n).sum() > 0 for n in lc.sae_names)
    # a broken replacement folder is refused before any model loads, and nothing is written
    (tmp_path / "plt" / "replacement.json").write_text(
        json.dumps(json.loads((tmp_path / "plt" / "replacement.json").read_text()) | {"layers": [0, 1, 2, 9]})
    )
    with pytest.raises(UserError, match="layer 9"):
        from saelab.features.cache_config import LatentCacheConfig
        from saelab.features.latent_cache_writer import write_latent_cache

        write_latent_cache(LatentCacheConfig(sae_dirs=[str(tmp_path / "plt")], tokens=1024, out=str(tmp_path / "d")))
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------ explain / score -> feature pages


@pytest.fixture(scope="module")
def explained(cached, tmp_path_factory):
    """`explain --explainer stats` on latents of layers 0 and 2 of the cached CLT, then `score`."""
    fires = cached.fire_counts("clt")
    lat = [int(np.argmax(fires[:N])), 2 * N + int(np.argmax(fires[2 * N : 3 * N]))]
    run = tmp_path_factory.mktemp("clt_explain") / "run"
    args = ["explain", str(cached.path), "--dictionary", "clt", "--latents", *map(str, lat), "--explainer", "stats"]
    assert main([*args, *SMALL_EXAMPLES, "--out", str(run)]) == 0
    return run, lat


def test_explain_and_intervention_score_run_on_a_clt_cache(explained, cached):
    from saelab.interpret.records import load_run

    run, lat = explained
    r = load_run(run)
    assert [r.explanations[j]["status"] for j in lat] == ["ok", "ok"]
    assert main(["score", str(run), "--scorers", "intervention"]) == 0
    got = load_run(run).scores["intervention"]
    assert set(got) == set(lat) and all(got[j]["ok"] for j in lat), got
    # it steers each latent at its own layer's MLP output, along the decoder the cache recorded
    from saelab.interpret.scorers.intervention import InterventionScorer

    sc = InterventionScorer(load_model(cached.manifest["model_spec"]), cached, "clt")
    outs = cached.info("clt")["clt"]["output_sites"]
    assert [sc.site(j) for j in lat] == [outs[0], outs[2]]


def test_feature_page_shows_encoder_layer_and_decoder_norms(explained, cached, clt_run, lm):
    from saelab.view.feature_store import FeatureStore
    from saelab.view.render import feature_page

    run, lat = explained
    clt = _clt(clt_run)
    store = FeatureStore.build(
        clt_run / "clt", cache=cached.path, explanations=run, model=lm.model, tokenizer=lm.tokenizer
    )
    norms = clt.decoder_norms()
    for g in lat + [N + 1, 3 * N]:
        v = store.view(g)
        layer = g // N
        assert v["hookpoint"] == clt.cfg.hookpoint.split("+")[layer]
        c = v["clt"]
        assert c["layer"] == layer and c["local"] == g % N  # model layers = CLT layers here (all 4)
        assert [t["layer"] for t in c["targets"]] == list(range(layer, 4))
        assert [t["norm"] for t in c["targets"]] == pytest.approx(norms[g, layer:].tolist(), rel=1e-6)
        assert c["strongest"] == int(norms[g].argmax()) == layer  # the planted 1 / (1 + t - l) profile
        rows, pos, vals = cached.latent_records("clt", g)
        assert v["max_act"] == pytest.approx(float(vals.max())) and v["fires"] == len(vals)
        html = feature_page(v, link=lambda j: f"{j}.html", home="index.html")
        assert 'id="writes-chart"' in html and html.count('class="write"') == 4 - layer
        shown = re.search(r'id="writes-chart" [^>]*data-norms="([^"]+)" data-layers="([^"]+)"', html)  # page.js draws
        assert [float(x) for x in shown.group(1).split(",")] == pytest.approx(norms[g, layer:].tolist(), rel=1e-5)
        assert [int(x) for x in shown.group(2).split(",")] == list(range(layer, 4))
        assert f"writes to layers\n {layer}..3, strongest at {layer}" in html
    # explain -> page: the page shows the run's explanation
    from saelab.interpret.records import load_run

    r = load_run(run)
    assert store.view(lat[0])["explanation"] == r.explanations[lat[0]]["explanation"]
    # logit effects: the decoders summed over target layers, through the final norm and the unembedding
    fam = family_of(lm.model)
    g = lat[1]
    want = (fam.final_norm_fn(lm.model)(summed_decoders(clt)[g][None]) @ fam.unembedding(lm.model).T)[0]
    top = want.topk(10)
    assert [p["logit"] for p in store.view(g)["promoted"]] == pytest.approx(top.values.tolist(), rel=1e-4)
    # nearest features: cosine of the cached (own-layer) decoders
    d = own_decoders(clt)
    d = d / d.norm(dim=1, keepdim=True)
    near = store.view(g)["nearest"][0]
    assert near["cos"] == pytest.approx(float(d[near["id"]] @ d[g]), abs=1e-5)
    # "test on your own text": every layer's features from one forward, the cached values at a cached token
    rows, pos, vals = cached.latent_records("clt", g)
    i = int(np.argmax(vals))
    ids = torch.from_numpy(cached.tokens[rows[i]][None].astype(np.int64))
    dense = store.dense_acts(collect_activations(lm.model, ids, store.sites))
    assert dense.shape == (64, 4 * N) and float(dense[pos[i], g]) == pytest.approx(float(vals[i]), rel=1e-5)
    assert "cross-layer transcoder over layers 0-3" in store.site_label


def test_dashboard_of_a_clt(explained, cached, clt_run, tmp_path):
    run, lat = explained
    out = tmp_path / "dash"
    args = ["dashboard", str(clt_run / "clt"), "--cache", str(cached.path), "--explanations", str(run)]
    assert main([*args, "--latents", f"{lat[0]},{lat[1]}", "--out", str(out)]) == 0
    page = (out / "features" / f"{lat[1]}.html").read_text()
    assert "Writes to layers" in page and "strongest at 2" in page
    assert "cross-layer transcoder over layers 0-3" in (out / "index.html").read_text()


# ------------------------------------------------------------ steering


def _mlp_outputs(model, sites, ids, ctx):
    """(each MLP's own output, each MLP output as the forward used it) in one forward under ctx()."""
    raw, used = {}, {}
    hs = [
        model.get_submodule(s).register_forward_hook(lambda m, a, o, s=s: raw.__setitem__(s, o.clone())) for s in sites
    ]
    try:
        with torch.no_grad(), ctx():
            hs += [
                model.get_submodule(s).register_forward_hook(lambda m, a, o, s=s: used.__setitem__(s, o.clone()))
                for s in sites
            ]
            logits = model(input_ids=ids, use_cache=False).logits
    finally:
        for h in hs:
            h.remove()
    return [raw[s] for s in sites], [used[s] for s in sites], logits


def test_unedited_clt_steering_is_bitwise_the_clean_model(clt_run, lm):
    clt = _clt(clt_run)
    ids = torch.randint(3, 2000, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = lm.model(input_ids=ids, use_cache=False).logits
    for edits in ([], [FeatureEdit(N + 2, "add", 0.0)]):
        with torch.no_grad(), steering_context(lm.model, clt, FeatureSteer(edits, skip_first=0))():
            assert torch.equal(lm.model(input_ids=ids, use_cache=False).logits, clean)


@pytest.mark.parametrize("layer", [0, 2])
def test_steering_a_clt_feature_writes_to_every_later_layer_and_none_before(clt_run, lm, layer):
    clt = _clt(clt_run)
    sites = clt.cfg.out_hookpoint.split("+")
    ids = torch.randint(3, 2000, (1, 16), generator=torch.Generator().manual_seed(2))
    from contextlib import nullcontext

    clean_raw, _, clean_logits = _mlp_outputs(lm.model, sites, ids, nullcontext)
    g, v = layer * N + 7, 5.0
    steer = FeatureSteer([FeatureEdit(g, "add", v)], skip_first=1)
    raw, used, logits = _mlp_outputs(lm.model, sites, ids, steering_context(lm.model, clt, steer))
    for t in range(4):
        if t < layer:  # before its layer: untouched, bitwise
            assert torch.equal(used[t], clean_raw[t])
            continue
        # from its layer on: the MLP's own output (its input may have moved) + v x its decoder into t,
        # at every position but the sink
        want = v * clt.decoder_vectors(torch.tensor([g]), t)[0]
        delta = used[t] - raw[t]
        assert torch.allclose(delta[0, 1:], want.expand(15, -1), atol=1e-5)
        assert delta[0, 0].abs().max() == 0
        assert (used[t] - clean_raw[t]).abs().max() > 1e-3
    assert torch.equal(raw[layer], clean_raw[layer])  # its own layer's MLP input is not moved by the edit
    assert (logits - clean_logits).abs().max() > 1e-4


def test_clt_clamp_kv_cached_equals_full_recompute(clt_run, lm):
    clt = _clt(clt_run)
    ids = torch.randint(3, 2000, (1, 12), generator=torch.Generator().manual_seed(3))
    edits = [FeatureEdit(N + 4, "clamp", 6.0), FeatureEdit(3 * N + 1, "add", -2.0)]
    steer = FeatureSteer(edits, skip_first=1)
    ctx = steering_context(lm.model, clt, steer)
    with torch.no_grad():
        steer.reset()
        with ctx():
            full = lm.model(input_ids=ids, use_cache=False).logits[0, -1]
        steer.reset()
        with ctx():
            out = lm.model(input_ids=ids[:, :-1], use_cache=True)
        with ctx():
            past = {_cache_kwarg(lm.model): getattr(out, "cache", None) or out.past_key_values}
            last = lm.model(input_ids=ids[:, -1:], use_cache=True, **past).logits[0, -1]
    assert torch.allclose(full, last, atol=1e-4)


def test_saelab_steer_on_a_clt_folder(clt_run, cached, tmp_path, capsys):
    out = tmp_path / "s.json"
    g = N + int(np.argmax(cached.fire_counts("clt")[N : 2 * N]))
    args = ["steer", str(clt_run / "clt"), "--prompt", "The cat sat on the", "--clamp", f"{g}=4x"]
    assert main([*args, "--cache", str(cached.path), "--max-new-tokens", "6", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    want = 4 * float(cached.max_activation("clt")[g])
    assert res["results"][0]["sweep"][0]["edits"][0]["value"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(UserError, match="needs --hookpoint"):
        from saelab.features.steering import SteeringRequest

        SteeringRequest(["x"], positive=["a"], negative=["b"]).check_sae(open_sae(clt_run / "clt").sae)


def test_web_app_fire_reads_every_layer_of_a_clt(explained, cached, clt_run, lm):
    from saelab.features.steer import encode_prompt
    from saelab.view.feature_store import FeatureStore
    from saelab.view.web_app import App

    store = FeatureStore.build(clt_run / "clt", cache=cached.path, model=lm.model, tokenizer=lm.tokenizer)
    text = "The cat sat on the mat because it was warm"
    g = explained[1][1]
    got = App([store]).fire(store, text, 8, g)
    ids = encode_prompt(lm.tokenizer, text)
    want = store.dense_acts(collect_activations(lm.model, ids, store.sites))  # [T, L*n]
    assert [t["act"] for t in got["tokens"]] == pytest.approx(want[1:, g].tolist(), abs=1e-6)
    layers = {f["id"] // N for t in got["tokens"] for f in t["features"]}
    assert layers == {0, 1, 2, 3}  # the top features of a token come from every layer's encoder
    assert got["max_act"] == pytest.approx(float(cached.max_activation("clt")[g]))


def test_a_trained_batchtopk_clt_run_caches_as_its_encoder_says(tmp_path, tiny_model_dir, text_corpus, lm):
    """`train --layers all --arch clt --clt-sparsity batchtopk` -> `saelab cache RUN`: the cached values are
    the trained CLT's (inference thresholds) on each layer's input, its decoder norms the folder's."""
    from conftest import train_cfg

    from saelab.train.config import TrainConfig
    from saelab.train.loop import train

    hp = TrainConfig.__dataclass_fields__["hookpoints"].default_factory()
    kw = dict(arch="clt", clt_sparsity="batchtopk", latents=16, k=[2], tokens=2048, layers="all", hookpoints=hp)
    train(train_cfg(tmp_path / "run", tiny_model_dir, text_corpus, **kw))
    clt = _clt(tmp_path / "run")
    assert clt.sparsity == "batchtopk"
    assert main(["cache", str(tmp_path / "run"), "--tokens", "1024", "--out", str(tmp_path / "c")]) == 0
    lc = LatentCache.open(tmp_path / "c")
    (name,) = lc.sae_names
    assert torch.equal(lc.decoder_norms(name), clt.decoder_norms().float())
    row = 3
    ids = torch.from_numpy(lc.tokens[row][None].astype(np.int64))
    sites = clt.cfg.hookpoint.split("+")
    acts = collect_activations(lm.model, ids, sites)
    with torch.no_grad():
        dense = torch.cat([clt.encode_layer(l, acts[h][0]).to_dense() for l, h in enumerate(sites)], 1)  # [T, 64]
    keep = ~torch.from_numpy(np.array(lc.excluded[row]))
    got = torch.zeros_like(dense)
    for g in range(lc.d_sae(name)):
        rows, pos, vals = lc.latent_records(name, g)
        got[pos[rows == row], g] = torch.from_numpy(vals[rows == row])
    assert torch.allclose(got[keep], dense[keep], atol=1e-5) and dense[keep].gt(0).any()


def test_writes_names_the_models_layers_of_a_clt_over_some_layers():
    from saelab.features.clt_features import writes

    norms = torch.tensor([[0.5, 2.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.25]])  # [L*n, L], n = 1, L = 3
    w = writes(norms, 0, 1, [4, 8, 12])
    assert w["layer"] == 4 and w["strongest"] == 8 and [t["layer"] for t in w["targets"]] == [4, 8, 12]
    assert [t["rel"] for t in w["targets"]] == [0.25, 1.0, 0.5]
    assert writes(norms, 1, 1, [4, 8, 12])["strongest"] is None  # a dead decoder: no strongest layer
    w = writes(norms, 2, 1, [4, 8, 12])
    assert w["layer"] == 12 and [t["layer"] for t in w["targets"]] == [12] and w["strongest"] == 12
