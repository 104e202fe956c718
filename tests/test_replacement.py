"""Replacement models (issue 28): `train --layers` trains a transcoder per layer's MLP (a PLT set) from the
family adapter's sites on two families and writes replacement.json; `open_replacement` checks it (missing,
foreign or other-model folders, duplicate layers); `replaced` splices every layer at once (with error terms:
the clean model; a CLT causally); `saelab eval` on the folder reports per-layer FVU equal to each
transcoder's own eval, and the trained set beats an untrained one on KL."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from circuit_helpers import make_tiny_gpt2, tiny_clt
from conftest import train_cfg

from saelab.errors import UserError
from saelab.evaluate.run import EvalConfig, evaluate
from saelab.models import load_model
from saelab.sae.folder import open_sae, save_sae
from saelab.sae.replacement import MANIFEST, open_replacement, replaced
from saelab.train.config import TrainConfig
from saelab.train.layers import layer_plan, parse_layers
from saelab.train.loop import train

DEFAULT_HOOKPOINTS = TrainConfig.__dataclass_fields__[
    "hookpoints"
].default_factory()  # what --layers replaces (an explicit --hookpoints is refused)


def layers_cfg(out, model, corpus, **kw):
    kw = {"hookpoints": list(DEFAULT_HOOKPOINTS), "layers": "all", "tokens": 8192} | kw
    return train_cfg(out, model, corpus, **kw)


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory, embedded_folder):
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), embedded_folder)


@pytest.fixture(scope="module")
def plt_run(tmp_path_factory, tiny_model_dir, text_corpus):
    out = tmp_path_factory.mktemp("plt") / "run"
    train(layers_cfg(out, tiny_model_dir, text_corpus))
    return out


def _ids(n=2, t=24):
    return torch.randint(3, 2000, (n, t), generator=torch.Generator().manual_seed(1))


def _spliced_logits(lm, rep, ids, **kw):
    with torch.no_grad(), replaced(lm.model, rep, **kw):
        return lm.model(input_ids=ids, use_cache=False).logits


# ------------------------------------------------------------ --layers


def test_parse_layers_spellings_and_errors():
    assert parse_layers("all") is None
    assert parse_layers("0-3") == [0, 1, 2, 3]
    assert parse_layers("8,0,4,4") == [0, 4, 8]
    assert parse_layers("0-1,5") == [0, 1, 5]
    for bad, says in (("1-", "not a layer number"), ("3-1", "backwards"), ("a", "not a layer"), (" ", "empty")):
        with pytest.raises(UserError, match=says):
            parse_layers(bad)


def test_layer_plan_reads_the_family_sites_before_loading(tiny_model_dir, tiny_gpt2_dir):
    lp = layer_plan(str(tiny_model_dir), "1,3")
    assert (lp.family, lp.model_layers, lp.layers) == ("llama", 4, (1, 3))
    assert lp.hookpoints == [
        "model.layers.1.post_attention_layernorm->model.layers.1.mlp",
        "model.layers.3.post_attention_layernorm->model.layers.3.mlp",
    ]
    g = layer_plan(str(tiny_gpt2_dir), "all")
    assert g.family == "gpt2" and g.input_sites == tuple(f"transformer.h.{i}.ln_2" for i in range(3))
    assert g.output_sites == tuple(f"transformer.h.{i}.mlp" for i in range(3))


def test_bad_layers_fail_before_the_model_loads(tmp_path, tiny_model_dir, text_corpus):
    with pytest.raises(UserError, match="layer 4 is out of range.*4 layers"):
        train(layers_cfg(tmp_path / "a", tiny_model_dir, text_corpus, layers="0,4"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(UserError, match="drop --hookpoints"):
        train_cfg(tmp_path / "b", tiny_model_dir, text_corpus, layers="all").validate()
    with pytest.raises(UserError, match="not a layer number"):
        layers_cfg(tmp_path / "c", tiny_model_dir, text_corpus, layers="0-x").validate()
    with pytest.raises(UserError, match="one --k"):
        layers_cfg(tmp_path / "d", tiny_model_dir, text_corpus, k=[4, 8]).validate()


# ------------------------------------------------------------ the replacement folder


def test_layers_all_trains_a_plt_set_and_writes_replacement_json(plt_run, tiny_model_dir):
    m = json.loads((plt_run / MANIFEST).read_text())
    assert (m["format"], m["version"], m["kind"], m["family"], m["model_layers"]) == (
        "saelab.replacement",
        1,
        "plt",
        "llama",
        4,
    )
    assert m["layers"] == [0, 1, 2, 3] and m["model"]["spec"] == str(tiny_model_dir)
    rep = open_replacement(plt_run)
    assert rep.kind == "plt" and rep.layers == [0, 1, 2, 3]
    for x, f in zip(rep.layers, rep.folders):
        c = f.sae.cfg
        assert (c.hookpoint, c.out_hookpoint) == (f"model.layers.{x}.post_attention_layernorm", f"model.layers.{x}.mlp")
        assert f.path.parent == plt_run
    # replacement.json is the run's last file: nothing written after it
    assert max(p.stat().st_mtime_ns for p in plt_run.iterdir()) == (plt_run / MANIFEST).stat().st_mtime_ns


def test_all_spliced_with_error_terms_is_the_clean_model(plt_run, tiny_model_dir):
    rep = open_replacement(plt_run)
    lm = load_model(str(tiny_model_dir))
    ids = _ids()
    with torch.no_grad():
        clean = lm.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(_spliced_logits(lm, rep, ids, error_terms=True), clean, atol=1e-5)
    dropped = _spliced_logits(lm, rep, ids)
    assert (dropped - clean).abs().max() > 1e-4
    keep = torch.zeros(ids.shape, dtype=torch.bool)
    keep[:, 0] = True  # a kept position is clean at every layer: its logits are the clean ones (causal)
    kept = _spliced_logits(lm, rep, ids, keep=keep)
    assert torch.allclose(kept[:, 0], clean[:, 0], atol=1e-5) and not torch.allclose(kept[:, 1:], clean[:, 1:])


def _copy(run, tmp_path):
    dst = tmp_path / "rep"
    shutil.copytree(run, dst)
    return dst, json.loads((dst / MANIFEST).read_text())


def _rewrite(dst, m):
    (dst / MANIFEST).write_text(json.dumps(m))


def test_open_replacement_refuses_bad_folders(plt_run, tmp_path):
    dst, m = _copy(plt_run, tmp_path)
    shutil.rmtree(dst / m["dictionaries"][2])
    with pytest.raises(UserError, match=f"layer 2: dictionary folder .*{m['dictionaries'][2]} is missing"):
        open_replacement(dst)
    shutil.copytree(plt_run / m["dictionaries"][2], dst / m["dictionaries"][2])
    foreign = dict(m, dictionaries=[m["dictionaries"][0], m["dictionaries"][3], *m["dictionaries"][2:]])
    _rewrite(dst, foreign)  # layer 1 names layer 3's transcoder: other sites
    with pytest.raises(UserError, match="layer 1: .* is a transcoder model.layers.3.*->model.layers.3.mlp, not "):
        open_replacement(dst)
    _rewrite(dst, dict(m, model={"spec": "embedded", "name": "SmolLM2"}))
    with pytest.raises(UserError, match="layer 0: .* was trained on model .*, not 'embedded'"):
        open_replacement(dst)
    _rewrite(dst, dict(m, layers=[0, 1, 1, 3]))
    with pytest.raises(UserError, match="layer 1 is listed twice"):
        open_replacement(dst)
    _rewrite(dst, dict(m, layers=[0, 1, 2, 7]))
    with pytest.raises(UserError, match="layer 7 is not a layer of the 4-layer model"):
        open_replacement(dst)
    (dst / MANIFEST).unlink()
    with pytest.raises(UserError, match="no replacement.json"):
        open_replacement(dst)


def test_gpt2_layers_all_splices_to_the_clean_model(tmp_path, tiny_gpt2_dir, text_corpus):
    out = tmp_path / "g"
    train(layers_cfg(out, tiny_gpt2_dir, text_corpus, arch="batchtopk", skip=True, tokens=2048))
    rep = open_replacement(out)
    assert rep.family == "gpt2" and rep.layers == [0, 1, 2]
    assert [f.sae.cfg.out_hookpoint for f in rep.folders] == [f"transformer.h.{i}.mlp" for i in range(3)]
    assert all(f.sae.cfg.skip and f.sae.cfg.arch == "batchtopk" for f in rep.folders)
    lm = load_model(str(tiny_gpt2_dir))
    ids = _ids()
    with torch.no_grad():
        clean = lm.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(_spliced_logits(lm, rep, ids, error_terms=True), clean, atol=1e-5)
    assert (_spliced_logits(lm, rep, ids) - clean).abs().max() > 1e-4


# ------------------------------------------------------------ eval


def _untrained_copy(run, tmp_path):
    """The same replacement folder with every transcoder re-initialised (random, untrained)."""
    dst, m = _copy(run, tmp_path)
    gen = torch.Generator().manual_seed(0)
    for d in m["dictionaries"]:
        f = open_sae(dst / d)
        f.sae.reset_parameters(gen)
        save_sae(f.sae, dst / d, f.provenance)
    return dst


def test_eval_replacement_metrics_match_each_transcoders_own_eval(plt_run, tmp_path, capsys):
    evaluate(EvalConfig(sae_dirs=[str(plt_run)], tokens=1024, ce_tokens=256, threads=2, overwrite=True))
    rec = json.loads((plt_run / "replacement_metrics.json").read_text())
    assert "replacement score" in capsys.readouterr().out
    assert (plt_run / rec["plot"]).exists()
    m = rec["metrics"]
    assert [r["layer"] for r in m["layers"]] == [0, 1, 2, 3]
    assert m["error_terms_max_abs_logit_diff"] < 1e-4
    assert m["kl"] > 0 and 0 <= m["top1_agreement"] <= 1 and 0 <= m["replacement_score"] <= 1
    assert m["ce_increase"] == pytest.approx(m["ce_spliced"] - m["ce_clean"])
    own = json.loads((plt_run / MANIFEST).read_text())["dictionaries"]
    for r, d in zip(m["layers"], own):
        target = tmp_path / f"{r['layer']}.json"
        evaluate(EvalConfig(sae_dirs=[str(plt_run / d)], tokens=1024, ce_tokens=0, out=str(target), threads=2), True)
        one = json.loads(target.read_text())["metrics"]
        assert r["fvu"] == pytest.approx(one["fvu"], rel=1e-6) and r["l0"] == pytest.approx(one["l0"], rel=1e-6)
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        evaluate(EvalConfig(sae_dirs=[str(plt_run)], tokens=256, ce_tokens=0))
    untrained = _untrained_copy(plt_run, tmp_path)
    evaluate(EvalConfig(sae_dirs=[str(untrained)], tokens=256, ce_tokens=256, threads=2, overwrite=True), True)
    worse = json.loads((untrained / "replacement_metrics.json").read_text())["metrics"]
    assert worse["kl"] > 2 * m["kl"]
    assert all(w["fvu"] > r["fvu"] for w, r in zip(worse["layers"], m["layers"]))


# ------------------------------------------------------------ CLT


def _clt_folder(tmp_path, model_dir, n=32, k=4, corpus="builtin"):
    """A random CLT over the tiny llama's 4 MLPs (no biases), saved as a replacement folder of kind clt."""
    return tiny_clt(model_dir, tmp_path / "clt", n, k, bias=0.0, corpus=corpus)


def test_clt_splice_is_causal_and_error_terms_give_the_clean_model(tmp_path, tiny_model_dir):
    rep = open_replacement(_clt_folder(tmp_path, tiny_model_dir))
    assert rep.kind == "clt" and len(rep.folders) == 1
    clt = rep.dictionaries[0]
    lm = load_model(str(tiny_model_dir))
    ids = _ids()
    with torch.no_grad():
        clean = lm.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(_spliced_logits(lm, rep, ids, error_terms=True), clean, atol=1e-5)
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), replaced(lm.model, rep):
        from saelab.evaluate.metrics import _record

        hs = [_record(lm.model, h, store) for h in rep.input_sites + rep.output_sites]
        spliced = lm.model(input_ids=ids, use_cache=False).logits
        for h in hs:
            h.remove()
    assert (spliced - clean).abs().max() > 1e-4
    # each MLP output is the sum of the decoders of layers <= t, every layer encoded from ITS input in this
    # (spliced) forward
    lats = [clt.encode_layer(i, store[h].reshape(-1, 64)) for i, h in enumerate(rep.input_sites)]
    for t, h in enumerate(rep.output_sites):
        want = clt.output_bias(t) + sum(clt.decode_layer(s, lats[s], t) for s in range(t + 1))
        assert torch.allclose(store[h].reshape(-1, 64), want, atol=1e-5)


def test_layers_subset_with_jumprelu_and_skip(tmp_path, tiny_model_dir, text_corpus):
    out = tmp_path / "j"
    train(
        layers_cfg(
            out,
            tiny_model_dir,
            text_corpus,
            layers="1,3",
            arch="jumprelu",
            sparsity_coeff=[1e-3],
            skip=True,
            tokens=1024,
        )
    )
    rep = open_replacement(out)
    assert rep.layers == [1, 3] and [f.sae.cfg.arch for f in rep.folders] == ["jumprelu", "jumprelu"]
    assert [f.sae.cfg.hookpoint for f in rep.folders] == [f"model.layers.{i}.post_attention_layernorm" for i in (1, 3)]
    lm = load_model(str(tiny_model_dir))
    ids = _ids()
    with torch.no_grad():
        clean = lm.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(_spliced_logits(lm, rep, ids, error_terms=True), clean, atol=1e-5)


def test_eval_of_a_clt_replacement(tmp_path, tiny_model_dir, text_corpus):
    folder = _clt_folder(tmp_path, tiny_model_dir, corpus=text_corpus)
    rec = evaluate(EvalConfig(sae_dirs=[str(folder)], tokens=512, ce_tokens=128, threads=2), True)
    rec = json.loads((folder / "replacement_metrics.json").read_text())
    m = rec["metrics"]
    assert rec["kind"] == "clt" and [r["layer"] for r in m["layers"]] == [0, 1, 2, 3]
    assert all(r["fvu"] > 0 and 0 < r["l0"] <= 4 for r in m["layers"])
    assert m["error_terms_max_abs_logit_diff"] < 1e-4 and m["kl"] > 0


def test_layers_all_with_arch_clt_trains_one_clt_and_evaluates_as_its_folder(tmp_path, tiny_model_dir, text_corpus):
    out = tmp_path / "c"
    train(layers_cfg(out, tiny_model_dir, text_corpus, arch="clt", latents=32, k=[4], tokens=2048))
    rep = open_replacement(out)
    assert rep.kind == "clt" and len(rep.folders) == 1 and rep.dictionaries[0].n_per_layer == 32
    lm = load_model(str(tiny_model_dir))
    ids = _ids()
    with torch.no_grad():
        clean = lm.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(_spliced_logits(lm, rep, ids, error_terms=True), clean, atol=1e-5)
    evaluate(EvalConfig(sae_dirs=[str(out)], tokens=512, ce_tokens=0, threads=2), True)
    layers = json.loads((out / "replacement_metrics.json").read_text())["metrics"]["layers"]
    own = tmp_path / "own.json"  # the CLT's own folder through `saelab eval` (per output site, clean inputs)
    evaluate(EvalConfig(sae_dirs=[str(rep.folders[0].path)], tokens=512, ce_tokens=0, out=str(own), threads=2), True)
    per_site = json.loads(own.read_text())["metrics"]["fvu_per_site"]
    assert [r["fvu"] for r in layers] == pytest.approx([per_site[h] for h in rep.output_sites], rel=1e-5)


def test_overwrite_of_a_replacement_folder_removes_its_replacement_files(plt_run, tmp_path):
    from saelab.out_folder import TRAINING_RUN, kind_of, open_out

    dst, _ = _copy(plt_run, tmp_path)
    (dst / "replacement_metrics.json").write_text("{}")
    (dst / "notes.txt").write_text("mine")
    assert kind_of(dst) is TRAINING_RUN
    folder = open_out(dst, TRAINING_RUN, overwrite=True)
    folder.prepare()
    folder.done()
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]


def test_cli_layers_errors_exit_2(tmp_path, tiny_model_dir, text_corpus, capsys):
    from saelab.cli import main

    base = ["train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus), "--out", str(tmp_path / "o")]
    assert main([*base, "--layers", "0-1", "--hookpoints", "model.layers.1"]) == 2
    assert "drop --hookpoints" in capsys.readouterr().err
    assert main([*base, "--layers", "2,9"]) == 2
    assert "layer 9 is out of range" in capsys.readouterr().err and not (tmp_path / "o").exists()
