"""SAELens and sparsify folders, built here from their documented layouts (SAELens v5/v6 cfg keys,
sparsify's `encoder.weight`/`W_dec` layout), load into SAEs that compute what the foreign code
computes, and export back byte-for-byte equal tensors and equal configs."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli
from safetensors.torch import load_file, save_file

from saelab.errors import UserError
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, load_sae, save_sae
from saelab.sae.foreign import load_foreign, resolve_source
from saelab.sae.foreign_saelens import export_saelens
from saelab.sae.foreign_sparsify import export_sparsify

D, S, K = 16, 48, 5


def _rand(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _saelens_folder(path: Path, arch="topk", v6=True, apply_b_dec=True, norm="none", extra_cfg=None, k=K):
    path.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": _rand(1, D, S), "b_enc": _rand(2, S) * 0.1, "W_dec": _rand(3, S, D), "b_dec": _rand(4, D)}
    if arch == "jumprelu":
        t["threshold"] = _rand(5, S).abs() * 0.5
    save_file(t, str(path / "sae_weights.safetensors"))
    meta = {
        "model_name": "tiny",
        "hook_name": "model.layers.1",
        "context_size": 64,
        "prepend_bos": True,
        "hook_head_index": None,
        "dataset_path": "topics",
    }
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": S,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": norm,
    }
    if v6:
        cfg |= {"reshape_activations": "none", "metadata": meta | {"sae_lens_version": "6.5.0"}}
        if arch == "topk":
            cfg |= {"k": k, "rescale_acts_by_decoder_norm": False}
    else:  # v5: everything top level, topk as an activation function of a "standard" SAE
        cfg |= meta | {"hook_layer": 1, "finetuning_scaling_factor": False, "sae_lens_training_version": "5.9.0"}
        if arch == "topk":
            cfg |= {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k}}
        else:
            cfg |= {"activation_fn_str": "relu", "activation_fn_kwargs": {}}
    cfg |= extra_cfg or {}
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t, cfg


def _saelens_forward(t, x, arch, k=K, apply_b_dec=True, scale=1.0):
    """What SAELens computes (sae.py process_sae_in / topk_sae / jumprelu_sae / standard_sae)."""
    x = x * scale
    pre = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]
    if arch == "topk":
        top = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    elif arch == "jumprelu":
        acts = pre.relu() * (pre > t["threshold"])
    else:
        acts = pre.relu()
    return (acts @ t["W_dec"] + t["b_dec"]) / scale


X = _rand(9, 200, D) * 3 + 1


@pytest.mark.parametrize(
    "arch,v6", [("topk", True), ("topk", False), ("jumprelu", True), ("standard", False), ("standard", True)]
)
def test_saelens_roundtrip_exact(tmp_path, arch, v6):
    t, cfg = _saelens_folder(tmp_path / "src", arch, v6)
    sae, ours = load_sae(tmp_path / "src")  # no saelab block -> the foreign loader
    assert sae.cfg.hookpoint == "model.layers.1" and ours["saelab"]["imported_from"]["format"] == "saelens"
    assert sae.cfg.arch == {"topk": "topk", "jumprelu": "jumprelu", "standard": "relu"}[arch]
    torch.testing.assert_close(sae.reconstruct(X), _saelens_forward(t, X, arch), rtol=1e-4, atol=1e-4)
    export_saelens(sae, tmp_path / "back", "tiny", 64, "topics")
    back = load_file(str(tmp_path / "back" / "sae_weights.safetensors"))
    assert set(back) == set(t)
    for name in t:  # JumpReLU trains log(threshold): threshold survives exp(log(.)) to ~1 ulp, the rest bit-exact
        if name == "threshold":
            torch.testing.assert_close(back[name], t[name], rtol=1e-6, atol=0)
        else:
            assert torch.equal(back[name], t[name]), name
    bcfg = json.loads((tmp_path / "back" / "cfg.json").read_text())
    assert "saelab" not in bcfg
    for key in ("d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations"):
        assert bcfg[key] == cfg[key]
    assert bcfg["architecture"] == ("topk" if arch == "topk" else arch)
    assert bcfg.get("k") == (K if arch == "topk" else None)
    for key in ("model_name", "hook_name", "context_size", "dataset_path"):
        assert bcfg["metadata"][key] == (cfg.get("metadata") or cfg)[key]


def test_saelens_without_b_dec_centering_and_with_norm_factor(tmp_path):
    t, _ = _saelens_folder(tmp_path / "a", "topk", apply_b_dec=False)
    sae, _ = load_sae(tmp_path / "a")
    torch.testing.assert_close(
        sae.reconstruct(X), _saelens_forward(t, X, "topk", apply_b_dec=False), rtol=1e-4, atol=1e-4
    )

    t, _ = _saelens_folder(tmp_path / "b", "jumprelu", norm="expected_average_only_in")
    with pytest.raises(UserError, match="norm scaling factor"):
        load_sae(tmp_path / "b")
    sae, _ = load_foreign(tmp_path / "b", norm_scaling_factor=0.37)
    torch.testing.assert_close(sae.reconstruct(X), _saelens_forward(t, X, "jumprelu", scale=0.37), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "tl,ours",
    [
        ("blocks.4.hook_resid_post", "model.layers.4"),
        ("blocks.4.hook_resid_pre", "model.layers.4:input"),
        ("blocks.4.hook_mlp_out", "model.layers.4.mlp"),
        ("blocks.4.hook_resid_mid", "model.layers.4.post_attention_layernorm:input"),
    ],
)
def test_transformerlens_hook_names_map_to_modules(tmp_path, tl, ours):
    _saelens_folder(tmp_path / "a", "topk", v6=False, extra_cfg={"hook_name": tl})
    sae, cfg = load_sae(tmp_path / "a")
    assert sae.cfg.hookpoint == ours and cfg["saelab"]["imported_from"]["cfg"]["hook_name"] == tl


def test_saelens_rescale_acts_by_decoder_norm_is_folded(tmp_path):
    t, _ = _saelens_folder(tmp_path / "a", "topk", extra_cfg={"rescale_acts_by_decoder_norm": True})
    sae, _ = load_sae(tmp_path / "a")
    n = t["W_dec"].norm(dim=1)
    pre = ((X - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * n  # SAELens: top-k on norm-weighted pre-acts
    top = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    ref = acts @ (t["W_dec"] / n[:, None]) + t["b_dec"]
    torch.testing.assert_close(sae.reconstruct(X), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"architecture": "temporal"}, "not supported"),
        ({"normalize_activations": "layer_norm"}, "layer_norm"),
        ({"d_sae": S + 1}, "shape"),
    ],
)
def test_saelens_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, bad, match):
    _saelens_folder(tmp_path / "src", "topk", extra_cfg=bad)
    with pytest.raises(UserError, match=match):
        load_sae(tmp_path / "src")
    r = _cli(["import", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "saelab: error" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def _sparsify_folder(root: Path, name="layers.1", transcode=False, num_latents=S, ef=3):
    folder = root / name
    folder.mkdir(parents=True)
    t = {
        "encoder.weight": _rand(11, S, D),
        "encoder.bias": _rand(12, S) * 0.1,
        "W_dec": _rand(13, S, D),
        "b_dec": _rand(14, D),
    }
    save_file(t, str(folder / "sae.safetensors"))
    cfg = {
        "activation": "topk",
        "expansion_factor": ef,
        "normalize_decoder": True,
        "num_latents": num_latents,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": transcode,
        "d_in": D,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, t, cfg


def _sparsify_forward(t, x, transcode=False):
    """sparsify SparseCoder.encode (x - b_dec unless transcode; relu(linear); top-k) + decode."""
    pre = torch.nn.functional.linear(x if transcode else x - t["b_dec"], t["encoder.weight"], t["encoder.bias"]).relu()
    top = pre.topk(K, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, top.values) @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_roundtrip_exact(tmp_path, transcode):
    folder, t, cfg = _sparsify_folder(tmp_path / "run", transcode=transcode)
    sae, ours = load_sae(folder)
    if transcode:
        assert (sae.cfg.hookpoint, sae.cfg.out_hookpoint) == ("model.layers.1:input", "model.layers.1")
    else:
        assert sae.cfg.hookpoint == "model.layers.1" and not sae.cfg.is_transcoder
    torch.testing.assert_close(sae.reconstruct(X), _sparsify_forward(t, X, transcode), rtol=1e-4, atol=1e-4)
    out = export_sparsify(sae, tmp_path / "back")
    assert out == tmp_path / "back" / "layers.1"
    back = load_file(str(out / "sae.safetensors"))
    assert set(back) == set(t) and all(torch.equal(back[n], t[n]) for n in t)
    assert json.loads((out / "cfg.json").read_text()) == cfg


def test_sparsify_num_latents_zero_uses_expansion_factor(tmp_path):
    folder, t, _ = _sparsify_folder(tmp_path / "run", num_latents=0, ef=S // D)
    sae, _ = load_sae(folder)
    assert sae.cfg.d_sae == S


def test_ours_roundtrip_through_both_formats(tmp_path):
    for arch, k in (("topk", 6), ("batchtopk", 6), ("jumprelu", None), ("relu", None)):
        sae = build_sae(SaeConfig(arch, d_in=D, d_sae=S, hookpoint="model.layers.2", k=k))
        sae.reset_parameters(torch.Generator().manual_seed(0))
        sae.init_from_data(X, X)  # non-unit scales: folding must be exact
        if arch == "batchtopk":
            sae.threshold.fill_(0.25)
        save_sae(sae, tmp_path / arch, Provenance(model_spec="x", model_name="tiny", context=64))
        mine, _ = load_sae(tmp_path / arch)
        export_saelens(mine, tmp_path / f"{arch}-sl", "tiny", 64)
        back, cfg = load_sae(tmp_path / f"{arch}-sl")
        assert cfg["saelab"]["imported_from"]["format"] == "saelens"
        ref = mine.folded_state()
        for name, v in back.folded_state().items():
            if name == "threshold":
                torch.testing.assert_close(v, ref[name], rtol=1e-6, atol=0)
            else:
                assert torch.equal(v, ref[name]), (arch, name)
        torch.testing.assert_close(back.reconstruct(X), mine.reconstruct(X))
        if arch == "topk":
            export_sparsify(mine, tmp_path / "sp")
            back2, _ = load_sae(tmp_path / "sp" / "layers.2")
            assert all(torch.equal(v, ref[n]) for n, v in back2.folded_state().items())
            assert back2.cfg.to_dict() == mine.cfg.to_dict()
        else:
            with pytest.raises(UserError, match="TopK"):
                export_sparsify(mine, tmp_path / "sp-bad")


def test_transcoder_export_rules(tmp_path):
    tc = build_sae(
        SaeConfig(
            "topk",
            d_in=D,
            d_sae=S,
            hookpoint="model.layers.1.post_attention_layernorm",
            out_hookpoint="model.layers.1.mlp",
            k=4,
        )
    )
    with pytest.raises(UserError, match="same module"):
        export_sparsify(tc, tmp_path / "x")
    with pytest.raises(UserError, match="transcoders"):
        export_saelens(tc, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_hub_source_resolves_through_snapshot_download(tmp_path):
    """The hub path with the download replaced by a local snapshot folder (no internet here)."""
    snap = tmp_path / "snapshot"
    _sparsify_folder(snap, "layers.3")
    calls = []

    def download(repo_id, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        return str(snap)

    folder = resolve_source("EleutherAI/sae-tiny/layers.3", download=download)
    assert calls == [("EleutherAI/sae-tiny", ["layers.3/*"])] and folder == snap / "layers.3"
    assert load_sae(folder)[0].cfg.hookpoint == "model.layers.3"
    with pytest.raises(UserError, match="no folder"):
        resolve_source("EleutherAI/sae-tiny/layers.9", download=download)
    with pytest.raises(UserError, match="neither an existing folder"):
        resolve_source(str(tmp_path / "missing"), download=download)

    def offline(repo_id, allow_patterns=None):
        raise OSError("no network")

    with pytest.raises(UserError, match="without internet"):
        resolve_source("someone/repo", download=offline)


def _cli(args):
    return cli(args)  # in this process: no interpreter and torch start-up per call


def test_import_export_commands_on_a_real_model(tmp_path, tiny_model_dir):
    from saelab.models import collect_activations, load_model

    _sparsify_folder(tmp_path / "run", "layers.1")
    _sparsify_folder(tmp_path / "run", "layers.2")
    r = _cli(
        [
            "import",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "ours"),
            "--model",
            str(tiny_model_dir),
            "--context",
            "64",
        ]
    )
    assert r.returncode == 0, r.stderr
    saes = [load_sae(tmp_path / "ours" / n) for n in ("layers.1", "layers.2")]
    assert all(c["saelab"]["model_spec"] == str(tiny_model_dir) for _, c in saes)
    lm = load_model(str(tiny_model_dir))  # the imported hookpoints name real modules
    acts = collect_activations(lm.model, torch.ones(1, 8, dtype=torch.long), [s.cfg.hookpoint for s, _ in saes])
    assert all(a.shape[-1] == D * 4 for a in acts.values())  # tiny model is d=64, foreign SAE is d=16: names resolve
    r = _cli(
        [
            "export",
            str(tmp_path / "ours" / "layers.1"),
            str(tmp_path / "ours" / "layers.2"),
            "--format",
            "sparsify",
            "--out",
            str(tmp_path / "again"),
        ]
    )
    assert r.returncode == 0, r.stderr
    for n in ("layers.1", "layers.2"):
        a = load_file(str(tmp_path / "run" / n / "sae.safetensors"))
        b = load_file(str(tmp_path / "again" / n / "sae.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    r = _cli(["export", str(tmp_path / "ours" / "layers.1"), "--format", "sparsify", "--out", str(tmp_path / "again")])
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_import_refuses_nan_weights_and_writes_nothing(tmp_path):
    from saelab.sae.convert import ImportConfig, import_folders

    folder, t, _ = _sparsify_folder(tmp_path / "src")
    t["W_dec"][2, 3] = float("nan")
    save_file(t, str(folder / "sae.safetensors"))
    with pytest.raises(UserError, match="W_dec holds 1 NaN/inf"):
        import_folders(ImportConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
