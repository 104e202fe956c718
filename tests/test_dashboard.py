"""Dashboards: every number on a feature page checked against an independent recomputation
(examples, density, promoted tokens, nearest features), explanations read and escaped, one file
per feature, and the `saelab dashboard` command."""

import json

import numpy as np
import pytest
import torch
from view_helpers import make_interpretation_run, make_sae_folder

from saelab.cli import main
from saelab.commands import latent_list
from saelab.errors import UserError
from saelab.features.cache_config import LatentCacheConfig
from saelab.features.latent_cache_writer import write_latent_cache
from saelab.models import collect_activations, load_model
from saelab.view.feature_store import FeatureStore
from saelab.view.static_site import write_dashboard

XSS = "<script>window.__pwned=1</script> cats & dogs"


@pytest.fixture(scope="module")
def store(tiny_model_dir, text_corpus, tmp_path_factory):
    folder = make_sae_folder(tmp_path_factory.mktemp("sae") / "dash_sae", tiny_model_dir, text_corpus)
    (folder / "explanations.jsonl").write_text(
        json.dumps({"latent": 0, "explanation": XSS, "scores": {"detection": {"auc": 0.75}, "embedding_auc": 0.6}})
        + "\n"
        + json.dumps({"latent": 2, "explanation": "the word about"})
        + "\n"
        + '{"latent": 3, "explanat'
    )  # cut line
    lm = load_model(str(tiny_model_dir))
    return FeatureStore.build(folder, tokens=4096, model=lm.model, tokenizer=lm.tokenizer, progress=False)


def test_examples_match_a_recomputation(store):
    tokens = store.cache.tokens
    checked = 0
    for i in range(store.d_sae):
        v = store.view(i)
        if not v["top"]:
            continue
        vals = [e.value for e in v["top"]]
        assert vals == sorted(vals, reverse=True)
        assert vals[0] == pytest.approx(float(store.max_act[i]))
        assert v["fires"] == int(store.cache.fire_counts(store.dict_name)[i])
        assert v["density"] == pytest.approx(v["fires"] / store.n_positions)
        assert sum(v["hist"]["counts"]) == v["fires"]
        if checked < 3:  # recompute the top example's window with the model and the SAE
            rows, pos, val = store.cache.latent_records(store.dict_name, i)
            j = int(np.argmax(val))
            r, p = int(rows[j]), int(pos[j])
            ids = torch.from_numpy(np.asarray(tokens[r : r + 1], dtype=np.int64))
            act = collect_activations(store.model, ids, ["model.layers.1"])["model.layers.1"][0]
            dense = store.sae.encode_raw(act).to_dense()[:, i]
            ex = v["top"][0]
            a = p - ex.peak
            want = dense[a : a + len(ex.acts)].numpy()
            excl = store.cache.excluded[r, a : a + len(ex.acts)]
            want[excl] = 0.0  # sink positions are never recorded
            np.testing.assert_allclose(ex.acts, want, rtol=1e-4, atol=1e-5)
            assert ex.tokens == [store.tok.decode([int(t)]) for t in tokens[r, a : a + len(ex.acts)]]
            checked += 1
        for rg in v["ranges"]:
            for e in rg["examples"]:
                assert rg["lo"] < e.value <= rg["hi"] + 1e-6
    assert checked == 3


def test_promoted_tokens_and_nearest_features(store):
    g = store.model.model.norm.weight
    U = store.model.lm_head.weight
    i = 7
    logits = (store.sae.W_dec[i] * g) @ U.T
    v = store.view(i)
    assert [t["token"] for t in v["promoted"]] == [store.tok.decode([int(t)]) for t in logits.topk(10).indices]
    assert [t["token"] for t in v["suppressed"]] == [store.tok.decode([int(t)]) for t in (-logits).topk(10).indices]
    W = torch.nn.functional.normalize(store.sae.W_dec.detach(), dim=1)
    cos = W @ W[i]
    cos[i] = -2
    assert [n["id"] for n in v["nearest"]] == cos.topk(6).indices.tolist()
    assert v["nearest"][0]["cos"] == pytest.approx(float(cos.max()), abs=1e-5)


def test_explanations_and_search(store):
    assert store.explanation(0) == XSS and store.view(0)["scores"] == []  # a plain JSONL file carries no scorer results
    assert 3 not in store.explanations  # a line cut by a crash is skipped
    assert [r["id"] for r in store.search("cats dogs")] == [0]
    assert [r["id"] for r in store.search("ABOUT")] == [2]
    assert store.search("elephants") == []
    dens = [r["density"] for r in store.search("", limit=20)]  # an empty query lists the densest features
    assert len(dens) == 20 and dens == sorted(dens, reverse=True) and dens[0] == pytest.approx(float(store.freq.max()))
    tok = store.top_tokens[5][0]
    assert 5 in [r["id"] for r in store.search(tok, by="token")]
    with pytest.raises(UserError):
        store.search("x", by="nonsense")


def test_static_dashboard_escapes_and_writes_one_file_per_feature(store, tmp_path):
    out = write_dashboard(store, tmp_path / "dash", progress=False)
    pages = sorted(out.glob("features/*.html"))
    assert len(pages) == store.d_sae
    assert (out / "density.png").stat().st_size > 1000
    page0 = (out / "features" / "0.html").read_text()
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt; cats &amp; dogs" in page0
    assert "<script>window" not in page0
    assert 'id="histogram"' in page0
    assert '<link rel="stylesheet" href="../style.css">' in page0 and ".cols>div" in (out / "style.css").read_text()
    from saelab.view.render import feature_page

    inline = feature_page(store.view(0), link=str, home="/")  # the app's pages: inline and not escaped
    assert ".cols>div" in inline and "&gt;" not in inline.split("</style>")[0]
    index = (out / "index.html").read_text()
    assert "&lt;script&gt;window.__pwned" in index and index.count('href="features/') == store.d_sae
    rows = json.loads((out / "features.json").read_text())
    assert [r["id"] for r in rows] == list(range(store.d_sae))
    with pytest.raises(UserError, match="overwrite"):
        write_dashboard(store, out, progress=False)


def test_dashboard_never_replaces_what_it_did_not_write(store, tmp_path, capsys):
    """A run folder's manifest.json is not a dashboard's: refused with and without --overwrite, before
    any work; an earlier dashboard is replaced only with --overwrite."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"kind": "a training run"}\n')
    for extra in ([], ["--overwrite"]):
        assert main(["dashboard", str(store.sae_dir), "--out", str(run), "--tokens", "4096", *extra]) == 2
        assert "manifest.json" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]
    assert (run / "manifest.json").read_text() == '{"kind": "a training run"}\n'
    out = write_dashboard(store, tmp_path / "d", latents=[0], progress=False)
    assert json.loads((out / "manifest.json").read_text())["kind"] == "saelab dashboard"
    write_dashboard(store, out, latents=[1], overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["n_features"] == 1


def test_given_cache_is_used(store, tmp_path, tiny_model_dir):
    cache = write_latent_cache(
        LatentCacheConfig(sae_dirs=[str(store.sae_dir)], tokens=2048, out=str(tmp_path / "cache")), progress=False
    )
    s2 = FeatureStore.build(store.sae_dir, cache=cache, model=store.model, tokenizer=store.tok, progress=False)
    assert s2.cache.path == cache and s2.n_positions < store.n_positions


def test_dashboard_command(store, tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["dashboard", str(store.sae_dir), "--out", str(out), "--tokens", "4096", "--latents", "0-3,9"]) == 0
    assert sorted(p.name for p in (out / "features").iterdir()) == ["0.html", "1.html", "2.html", "3.html", "9.html"]
    assert main(["dashboard", str(store.sae_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["dashboard", str(store.sae_dir), "--out", str(tmp_path / "e"), "--latents", "0-999"]) == 2
    assert "outside" in capsys.readouterr().err
    # a subset links only to pages it wrote
    import re

    for page in (out / "features").iterdir():
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            assert (page.parent / href).exists(), (page.name, href)
    # one latent-list syntax: ranges and lists, comma or space separated
    assert (
        main(
            ["dashboard", str(store.sae_dir), "--out", str(tmp_path / "f"), "--tokens", "4096", "--latents", "1", "3-4"]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "f" / "features").iterdir()) == ["1.html", "3.html", "4.html"]
    assert latent_list("1,3-4", 10) == latent_list(["1", "3", "4"]) == latent_list(["1,3", "4"]) == [1, 3, 4]
    assert latent_list(None) is None
    for bad in ("a-b", "4-2", ",", "1.5"):
        with pytest.raises(UserError, match="--latents"):
            latent_list(bad, 10)


# ---------------------------------------------------------------- interpretation runs on the page


@pytest.fixture(scope="module")
def run_of_store(store, tmp_path_factory):
    return make_interpretation_run(store.sae_dir, tmp_path_factory.mktemp("interp"))


def test_run_explanations_and_scores_reach_the_page(store, run_of_store, tmp_path):
    from saelab.interpret.records import load_run

    cache, run, nrun, lat = run_of_store
    recs = load_run(run)
    # examples.jsonl and scores_embedding.jsonl also carry `latent`: they must not replace the explanations
    assert (run / "examples.jsonl").exists() and (run / "scores_embedding.jsonl").exists()
    s2 = FeatureStore.build(
        store.sae_dir, cache=cache, explanations=run, model=store.model, tokenizer=store.tok, progress=False
    )
    for j in lat:
        want = recs.explanations[j]["explanation"]
        assert want and s2.explanation(j) == want
        (sc,) = s2.view(j)["scores"]
        auc = recs.scores["embedding"][j]["metrics"]["auc"]
        assert sc["scorer"] == "embedding" and sc["metric"] == "auc" and sc["chance"] == 0.5
        assert sc["value"] == pytest.approx(auc)
    out = tmp_path / "dash"
    assert (
        main(
            [
                "dashboard",
                str(store.sae_dir),
                "--out",
                str(out),
                "--cache",
                str(cache),
                "--explanations",
                str(run),
                "--latents",
                ",".join(map(str, lat)),
            ]
        )
        == 0
    )
    page = (out / "features" / f"{lat[0]}.html").read_text()
    from markupsafe import escape

    assert str(escape(recs.explanations[lat[0]]["explanation"])) in page
    assert f"{recs.scores['embedding'][lat[0]]['metrics']['auc']:.3f}" in page and "embedding" in page
    # the explanations.jsonl file of a run means the run (with its scores)
    s3 = FeatureStore.build(
        store.sae_dir,
        cache=cache,
        explanations=run / "explanations.jsonl",
        model=store.model,
        tokenizer=store.tok,
        progress=False,
    )
    assert s3.view(lat[0])["scores"][0]["value"] == pytest.approx(recs.scores["embedding"][lat[0]]["metrics"]["auc"])


def test_a_run_of_another_dictionary_is_refused(store, run_of_store, tmp_path, tiny_model_dir, text_corpus, capsys):
    cache, run, nrun, _ = run_of_store
    with pytest.raises(UserError, match="neurons"):  # a neurons run attached to the SAE's features
        FeatureStore.build(
            store.sae_dir, cache=cache, explanations=nrun, model=store.model, tokenizer=store.tok, progress=False
        )
    other = make_sae_folder(tmp_path / "other_sae", tiny_model_dir, text_corpus, seed=1)
    assert (
        main(["dashboard", str(other), "--out", str(tmp_path / "d"), "--tokens", "1024", "--explanations", str(run)])
        == 2
    )
    assert "not for the SAE" in capsys.readouterr().err
    with pytest.raises(UserError, match="not an interpretation run"):
        FeatureStore.build(
            store.sae_dir, cache=cache, explanations=tmp_path, model=store.model, tokenizer=store.tok, progress=False
        )
