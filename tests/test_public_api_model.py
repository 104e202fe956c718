"""The public API's dictionary and model half (saelab/api/dictionary.py, model.py): `saelab.load` on every kind
of folder, Dictionary maths equal to the module's, `Model.splice` equal to sae/splice.py, `Model.steer` equal
to what `saelab steer` runs, `Model.run` shapes and values; `import saelab` stays free of torch."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ct_helpers import ct_plt_forward, rand
from view_helpers import make_sae_folder

import saelab
from saelab.errors import UserError
from saelab.families import LLAMA
from saelab.features.steer import FeatureEdit, FeatureSteer, encode_prompt, steering_context
from saelab.features.steering import SteeringRequest, run_steering, sink_positions
from saelab.models import collect_activations
from saelab.sae import SaeConfig, build_sae
from saelab.sae.circuit_tracer_io import import_circuit_tracer
from saelab.sae.folder import Provenance, save_sae
from saelab.sae.foreign_circuit_tracer import PLT_KIND, CtLayer, CtSet, write_ct
from saelab.sae.foreign_saelens import export_saelens
from saelab.sae.foreign_sparsify import export_sparsify
from saelab.sae.releases import PullConfig, pull_release
from saelab.sae.splice import clt_spliced, spliced

TEXTS = ["The quick brown fox jumps over the lazy dog", "Sparse dictionaries"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, text_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    folder = make_sae_folder(root / "tiny_sae", tiny_model_dir, text_corpus)
    return saelab.Model.load(str(tiny_model_dir)), saelab.load(folder), root


def test_import_saelab_does_not_import_torch():
    code = "import sys, saelab; assert 'torch' not in sys.modules, 'torch imported'; print(sorted(saelab.__all__))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "Model" in out.stdout and "load" in out.stdout


def test_every_public_name_imports_and_is_documented():
    assert saelab.__all__ and set(saelab.__all__) <= set(dir(saelab))
    for name in saelab.__all__:
        obj = getattr(saelab, name)
        assert (obj.__doc__ or "").strip(), f"saelab.{name} has no docstring"
        if inspect.isclass(obj):  # its public methods and properties too
            for member, value in vars(obj).items():
                value = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                if not member.startswith("_") and (callable(value) or isinstance(value, property)):
                    assert (value.__doc__ or "").strip(), f"saelab.{name}.{member} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        saelab.nope  # noqa: B018


def test_load_saelab_folder_run_folders_and_sae_id(setup, tmp_path):
    _, d, root = setup
    src = root / "tiny_sae"
    assert d.path == src and d.hookpoint == "model.layers.1" and (d.d_in, d.d_sae, d.d_out) == (64, 128, 64)
    assert d.config.arch == "topk" and d.provenance.context == 64 and not d.is_transcoder
    assert saelab.Model.load(d).spec == d.provenance.model_spec  # the model it was trained on
    one = tmp_path / "run1"
    shutil.copytree(src, one / "model.layers.1-topk")
    got = saelab.load(one)
    assert got.name == "model.layers.1-topk" and torch.equal(got.module.W_enc, d.module.W_enc)
    several = tmp_path / "run2"
    shutil.copytree(src, several / "a")
    other = build_sae(SaeConfig("relu", d_in=64, d_sae=32, hookpoint="model.layers.2"))
    save_sae(other.eval(), several / "b", Provenance(model_name="tiny", context=64))
    with pytest.raises(UserError, match="holds 2 dictionaries; pick one with sae_id=: a, b"):
        saelab.load(several)
    b = saelab.load(several, sae_id="b")
    assert b.name == "b" and b.d_sae == 32 and b.hookpoint == "model.layers.2"
    with pytest.raises(UserError, match="no dictionary 'c'.*it holds: a, b"):
        saelab.load(several, sae_id="c")
    with pytest.raises(UserError, match="is one dictionary"):
        saelab.load(src, sae_id="a")
    with pytest.raises(UserError, match="does not exist"):
        saelab.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no dictionary in it"):
        saelab.load(tmp_path / "empty")
    with pytest.raises(UserError, match="close name: gpt2-small-res-jb"):
        saelab.load("gpt2-small-res-j")


def test_load_saelens_folder_and_release(setup, tmp_path, monkeypatch):
    _, d, _ = setup
    export_saelens(d.module, tmp_path / "saelens", "tiny", 64, "topics")
    theirs = saelab.load(tmp_path / "saelens")
    assert theirs.cfg_json["saelab"]["imported_from"]["format"] == "saelens"
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(theirs.encode(x), d.encode(x), atol=1e-5, rtol=1e-5)
    export_sparsify(d.module, tmp_path / "sparsify")  # sparsify's run layout: one folder per hookpoint
    sp = saelab.load(tmp_path / "sparsify")
    assert sp.cfg_json["saelab"]["imported_from"]["format"] == "sparsify" and sp.hookpoint == d.hookpoint
    torch.testing.assert_close(sp.encode(x), d.encode(x), atol=1e-5, rtol=1e-5)
    # a release of releases.json read straight from the hub (here: the hub replaced by that folder)
    calls = []
    monkeypatch.setattr(
        "saelab.sae.releases.download", lambda repo, sub: calls.append((repo, sub)) or tmp_path / "saelens"
    )
    with pytest.raises(UserError, match=r"gpt2-small-res-jb: give sae_id= \(e.g. blocks.0.hook_resid_pre, "):
        saelab.load("gpt2-small-res-jb")
    r = saelab.load("gpt2-small-res-jb", sae_id="blocks.3.hook_resid_pre")
    assert calls == [("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.3.hook_resid_pre")]
    assert r.hookpoint == "transformer.h.3:input" and r.provenance.model_spec == "gpt2"
    torch.testing.assert_close(r.forward(x).recon, d.forward(x).recon, atol=1e-5, rtol=1e-5)
    # the same release pulled with `saelab pull` (from a local copy of the repo) loads to the same weights
    shutil.copytree(tmp_path / "saelens", tmp_path / "repo" / "blocks.3.hook_resid_pre")
    cfg = PullConfig(
        "gpt2-small-res-jb", "blocks.3.hook_resid_pre", str(tmp_path / "pulled"), local=str(tmp_path / "repo")
    )
    pulled = saelab.load(pull_release(cfg))
    assert pulled.hookpoint == r.hookpoint and pulled.provenance.model_spec == "gpt2"
    assert all(torch.equal(a, b) for a, b in zip(pulled.module.state_dict().values(), r.module.state_dict().values()))


def test_load_circuit_tracer_folder_as_saelab_import_does(tmp_path):
    n, d, layers = 12, 8, 3
    ts = [
        {"W_enc": rand(i, n, d), "W_dec": rand(i + 10, n, d), "b_enc": rand(i + 20, n), "b_dec": rand(i + 30, d)}
        for i in range(layers)
    ]
    ct = CtSet(PLT_KIND, "meta-llama/Llama-3.2-1B", "mlp.hook_in", "mlp.hook_out", [CtLayer(**t) for t in ts])
    write_ct(ct, tmp_path / "ct")
    with pytest.raises(UserError, match="holds 3 dictionaries; pick one with sae_id=: layer_0, layer_1, layer_2"):
        saelab.load(tmp_path / "ct")
    t = saelab.load(tmp_path / "ct", sae_id="layer_1")
    assert (t.hookpoint, t.out_hookpoint) == (LLAMA.mlp_in_site(1), LLAMA.mlp_out_site(1)) and t.is_transcoder
    x = rand(7, 5, d)
    torch.testing.assert_close(t.forward(x).recon, ct_plt_forward(ts[1], x, "relu"), atol=1e-5, rtol=1e-5)
    import_circuit_tracer(tmp_path / "ct", tmp_path / "imported")  # `saelab import`: the same transcoder
    same = saelab.load(tmp_path / "imported", sae_id="layer_1")
    assert all(torch.equal(a, b) for a, b in zip(same.module.state_dict().values(), t.module.state_dict().values()))


def test_encode_decode_forward_agree_with_the_module(setup):
    _, d, _ = setup
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2)) * 2
    lat = d.encode(x)
    assert lat.shape == (2, 5, 128) and ((lat > 0).sum(-1) <= 8).all()
    assert torch.equal(lat, d.module.encode_raw(x.reshape(-1, 64)).to_dense().reshape(2, 5, 128))
    r = d.forward(x)
    torch.testing.assert_close(r.recon, d.module.reconstruct(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(d.decode(lat), r.recon, atol=1e-6, rtol=1e-6)
    assert torch.equal(r.latents, lat) and torch.equal(r.error, x - r.recon)
    with pytest.raises(UserError, match=r"expected activations \[\.\.\., 64\]"):
        d.encode(torch.zeros(3, 32))
    # a skip transcoder: decode needs the input for the skip; forward's error needs a target
    tc = build_sae(SaeConfig("topk", d_in=64, d_sae=32, hookpoint="a", out_hookpoint="b", k=4, skip=True))
    tc.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():
        tc.W_skip.normal_(generator=torch.Generator().manual_seed(4))
    t = saelab.Dictionary(type(d._folder)(d.path, tc.eval(), Provenance(), {}))
    rt = t.forward(x)
    torch.testing.assert_close(rt.recon, tc.reconstruct(x), atol=1e-5, rtol=1e-5)
    assert rt.error is None and torch.equal(t.forward(x, target=x).error, x - rt.recon)
    with pytest.raises(UserError, match="skip transcoder"):
        t.decode(rt.latents)


def test_splice_equals_sae_splice(setup):
    model, d, _ = setup
    ids, mask = model.tokenize(TEXTS[0])
    clean = model.run(ids).logits
    with spliced(model.torch_model, d.module):
        want = model.torch_model(input_ids=ids).logits
    with model.splice(d, skip_first=0):  # every position, the sink included
        got = model.run(ids).logits
    assert torch.equal(got, want) and not torch.allclose(got, clean)
    # the default keeps the sink positions the dictionary was trained without (as `saelab eval` does)
    skip = sink_positions(d.cfg_json)
    assert skip == 1
    keep = torch.zeros(ids.shape, dtype=torch.bool)
    keep[:, :skip] = True
    with spliced(model.torch_model, d.module, keep=keep):
        want_kept = model.torch_model(input_ids=ids).logits
    with model.splice(d):
        got_kept = model.run(ids).logits
        again = model.run(ids).logits  # each run is a new sequence: position 0 is the sink again
    assert torch.equal(got_kept, want_kept) and torch.equal(again, want_kept)
    assert torch.equal(got_kept[:, 0], clean[:, 0]) and not torch.allclose(got_kept, got)
    with model.splice([d], keep_error=True):  # the error term kept: the model's own output
        assert torch.equal(model.run(ids).logits, clean)
    assert torch.equal(model.run(ids).logits, clean)  # the hooks are gone after the block


def test_steer_clamps_the_feature_as_saelab_steer_does(setup):
    model, d, _ = setup
    prompt, j, v = TEXTS[0], 5, 7.0
    skip = sink_positions(d.cfg_json)
    ids = encode_prompt(model.tokenizer, prompt)
    clean = model.run(ids, features=[d])
    with model.steer(d, clamp={j: v}):
        out = model.run(ids, features=[d])
        again = model.run(ids, features=[d])  # the position counter restarts per run
        steered_text = model.generate(prompt, max_new_tokens=6)
    lat = out.features[d.name]
    assert skip == 1 and torch.equal(lat[0, skip:, j], torch.full_like(lat[0, skip:, j], v))
    assert torch.equal(lat[0, :skip], clean.features[d.name][0, :skip])  # the sink is left alone
    others = [i for i in range(d.d_sae) if i != j]
    assert torch.equal(lat[..., others], clean.features[d.name][..., others])
    assert torch.equal(again.logits, out.logits)
    # the logits are those of the steering code the CLI runs (features/steer.py), and differ from clean
    st = FeatureSteer([FeatureEdit(j, "clamp", v)], skip_first=skip)
    with steering_context(model.torch_model, d.module, st)():
        want = model.torch_model(input_ids=ids).logits
    assert torch.equal(out.logits, want) and not torch.allclose(out.logits, clean.logits)
    # the text is `saelab steer`'s (run_steering, same request), and unsteered outside the block
    req = SteeringRequest(prompts=[prompt], edits=[FeatureEdit(j, "clamp", v)], max_new_tokens=6)
    cli = run_steering(req, model.torch_model, model.tokenizer, d.module, None, skip).results[0]
    assert steered_text == cli["steered"] and model.generate(prompt, max_new_tokens=6) == cli["unsteered"]
    with model.steer(d, add={j: 2.5}):  # add = the decoder direction x value at the site, after the sink
        added = model.run(ids, activations=["model.layers.1"]).activations["model.layers.1"]
    base = model.run(ids, activations=["model.layers.1"]).activations["model.layers.1"]
    torch.testing.assert_close(
        (added - base)[0, skip:], (2.5 * d.module.W_dec[j]).expand(ids.shape[1] - skip, -1), atol=1e-5, rtol=1e-4
    )
    for bad, match in [({}, "nothing to steer"), ({"clamp": {999: 1.0}}, "latent 999 does not exist")]:
        with pytest.raises(UserError, match=match), model.steer(d, **bad):
            pass


def test_run_returns_the_requested_activations_and_features(setup, tmp_path):
    model, d, _ = setup
    assert "model.layers.1" in model.hookpoints and model.width("model.layers.1") == 64
    sites = ["model.layers.1", "model.layers.2.mlp.down_proj:input"]
    out = model.run(TEXTS, activations=sites, features={"f": d})
    n = out.tokens.shape[1]
    assert out.logits.shape == (2, n, model.torch_model.config.vocab_size)
    assert out.attention_mask.sum(1).tolist() == [len(encode_prompt(model.tokenizer, t)[0]) for t in TEXTS]
    assert out.activations["model.layers.1"].shape == (2, n, 64)
    assert out.activations["model.layers.2.mlp.down_proj:input"].shape == (2, n, 128)
    assert out.features["f"].shape == (2, n, 128)
    for row, text in enumerate(TEXTS):  # each row's real tokens as if run alone (right padding)
        ids = encode_prompt(model.tokenizer, text)
        alone = collect_activations(model.torch_model, ids, sites)
        k = ids.shape[1]
        for s in sites:
            torch.testing.assert_close(out.activations[s][row, :k], alone[s][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            out.features["f"][row, :k], d.encode(alone["model.layers.1"][0]), atol=1e-5, rtol=1e-5
        )
    assert set(model.run(TEXTS[1], activations=["model.layers.*"]).activations) == {
        f"model.layers.{i}" for i in range(4)
    }
    with pytest.raises(UserError, match="reads at most 256"):
        model.run("word " * 300)
    wide = build_sae(SaeConfig("relu", d_in=32, d_sae=16, hookpoint="model.layers.1"))
    save_sae(wide.eval(), tmp_path / "wide", Provenance(model_name="tiny", context=64))
    with pytest.raises(UserError, match="does not match the model's model.layers.1"):
        model.run(TEXTS, features=[saelab.load(tmp_path / "wide")])


def test_multi_site_dictionaries_splice_run_and_steer(setup, tmp_path):
    model, _, _ = setup
    ins, outs = [LLAMA.mlp_in_site(i) for i in range(4)], [LLAMA.mlp_out_site(i) for i in range(4)]
    cfg = SaeConfig("clt", 256, 64, "+".join(ins), 256, "+".join(outs), k=4, extra={"clt_sparsity": "topk"})
    clt = build_sae(cfg)
    clt.reset_parameters(torch.Generator().manual_seed(5))
    save_sae(clt.eval(), tmp_path / "clt", Provenance(model_name="tiny", context=64))
    d = saelab.load(tmp_path / "clt")
    ids, _ = model.tokenize(TEXTS[0])
    with clt_spliced(model.torch_model, d.module, ins, outs):
        want = model.torch_model(input_ids=ids).logits
    with model.splice(d):
        out = model.run(ids, activations=ins, features=[d])
    assert torch.equal(out.logits, want)
    # the latents the spliced CLT read: layer l's encoded from its MLP input in this (spliced) forward
    torch.testing.assert_close(out.features["clt"], d.encode(torch.cat([out.activations[s] for s in ins], -1)))
    clean = collect_activations(model.torch_model, ids, ins)
    alone = d.encode(torch.cat([clean[s] for s in ins], -1))
    assert torch.equal(out.features["clt"][..., :16], alone[..., :16])  # layer 0 reads before any splice
    assert not torch.allclose(out.features["clt"][..., 16:], alone[..., 16:])  # later layers: the spliced inputs
    with model.steer(d, clamp={20: 5.0}):  # latent 20: layer 1's 4th, written into MLP outputs 1..3
        steered = model.run(ids).logits
    st = FeatureSteer([FeatureEdit(20, "clamp", 5.0)], skip_first=1)
    with steering_context(model.torch_model, d.module, st)():
        assert torch.equal(steered, model.torch_model(input_ids=ids).logits)
    xc = build_sae(SaeConfig("crosscoder", 128, 32, "model.layers.1+model.layers.2", k=4))
    save_sae(xc.eval(), tmp_path / "xc", Provenance(model_name="tiny", context=64))
    xd = saelab.load(tmp_path / "xc")
    got = model.run(ids, activations=["model.layers.1", "model.layers.2"], features=[xd])
    both = torch.cat([got.activations["model.layers.1"], got.activations["model.layers.2"]], -1)
    assert torch.equal(got.features["xc"], xd.encode(both))
    with pytest.raises(UserError, match="crosscoder cannot be spliced"), model.splice(xd):
        pass
