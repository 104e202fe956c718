"""circuit-tracer interop: a saelab replacement folder exported in circuit-tracer's layout (config.yaml +
layer_{l}.safetensors, or W_enc_{l} / W_dec_{l} for a CLT) imports back with bit-identical weights; a folder
written by hand in that layout (tiny shapes) imports into transcoders that compute what circuit-tracer
computes (re-implemented below from circuit_tracer/transcoder/single_layer_transcoder.py and
cross_layer_transcoder.py); bad folders give one UserError before anything is written."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from saelab.cli import main
from saelab.errors import UserError
from saelab.families import LLAMA
from saelab.sae import SaeConfig, build_sae
from saelab.sae.circuit_tracer_io import export_circuit_tracer, import_circuit_tracer, read_manifest, write_manifest
from saelab.sae.folder import Provenance, open_sae, save_sae

D, S, L, K = 8, 12, 3, 3
LLAMA_NAME = "meta-llama/Llama-3.2-1B"


def _rand(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _plt_replacement(root: Path, arch="jumprelu", skip=False, layers=range(L), fam=LLAMA) -> Path:
    """A saelab replacement folder of random transcoders, one per layer, as the REPL training run writes it."""
    names = []
    for layer in layers:
        cfg = SaeConfig(
            arch=arch,
            d_in=D,
            d_sae=S,
            hookpoint=fam.mlp_in_site(layer),
            out_hookpoint=fam.mlp_out_site(layer),
            k=K if arch in ("topk", "batchtopk") else None,
            skip=skip,
        )
        sae = build_sae(cfg)
        s = 10 * layer
        t = {"W_enc": _rand(s, D, S), "b_enc": _rand(s + 1, S), "W_dec": _rand(s + 2, S, D), "b_dec": _rand(s + 3, D)}
        t["threshold"] = _rand(s + 4, S).abs() * 0.5
        if skip:
            t["W_skip"] = _rand(s + 5, D, D) * 0.1
        if arch != "gated":  # (a gated SAE has more tensors; its random start is enough to be refused)
            sae.load_folded(t)
        names.append(f"layer_{layer}")
        save_sae(sae, root / names[-1], Provenance(model_spec=LLAMA_NAME, model_name=LLAMA_NAME, context=64))
    ins = [fam.mlp_in_site(i) for i in layers]
    outs = [fam.mlp_out_site(i) for i in layers]
    write_manifest(root, "plt", LLAMA_NAME, fam, list(layers), ins, outs, names)
    return root


WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")


@pytest.mark.parametrize("arch,skip", [("jumprelu", False), ("relu", True), ("topk", False), ("batchtopk", True)])
def test_plt_export_layout_and_round_trip_bit_exact(tmp_path, arch, skip):
    rep = _plt_replacement(tmp_path / "rep", arch, skip)
    export_circuit_tracer(rep, tmp_path / "ct")
    cfg = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set" and cfg["model_name"] == LLAMA_NAME
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("mlp.hook_in", "mlp.hook_out")
    assert (cfg.get("activation"), cfg.get("k")) == (("topk", K) if arch == "topk" else (None, None))
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == ["config.yaml"] + [
        f"layer_{i}.safetensors" for i in range(L)
    ]
    for i in range(L):
        ours = open_sae(rep / f"layer_{i}").sae.folded_state()
        t = load_file(str(tmp_path / "ct" / f"layer_{i}.safetensors"))
        want = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"W_skip"} if skip else set())
        want |= {"activation_function.threshold"} if arch in ("jumprelu", "batchtopk") else set()
        assert set(t) == want
        assert t["W_enc"].shape == (S, D) and t["W_dec"].shape == (S, D)  # circuit-tracer's [d_transcoder, d_model]
        assert torch.equal(t["W_enc"], ours["W_enc"].t()) and torch.equal(t["W_dec"], ours["W_dec"])
        if arch in ("jumprelu", "batchtopk"):
            assert torch.equal(t["activation_function.threshold"], ours["threshold"])

    import_circuit_tracer(tmp_path / "ct", tmp_path / "back")
    m = read_manifest(tmp_path / "back")
    assert m["kind"] == "plt" and m["layers"] == list(range(L)) and m["family"] == "llama"
    assert m["input_sites"] == [LLAMA.mlp_in_site(i) for i in range(L)]
    assert m["output_sites"] == [LLAMA.mlp_out_site(i) for i in range(L)]
    for i, rel in enumerate(m["dictionaries"]):
        a, b = open_sae(rep / f"layer_{i}").sae, open_sae(tmp_path / "back" / rel).sae
        assert b.cfg.arch == ("jumprelu" if arch == "batchtopk" else arch) and b.cfg.skip == skip
        assert (b.cfg.hookpoint, b.cfg.out_hookpoint) == (a.cfg.hookpoint, a.cfg.out_hookpoint)
        fa, fb = a.folded_state(), b.folded_state()
        for name in WEIGHTS:
            assert (name in fa) == (name in fb) and (name not in fa or torch.equal(fa[name], fb[name])), name
        if "threshold" in fb:  # saelab keeps log(threshold): equal to float rounding, not bit for bit
            torch.testing.assert_close(fb["threshold"], fa["threshold"], rtol=1e-6, atol=0)
    # and out again: the same files, bit for bit
    export_circuit_tracer(tmp_path / "back", tmp_path / "ct2")
    for i in range(L):
        t1, t2 = (load_file(str(tmp_path / c / f"layer_{i}.safetensors")) for c in ("ct", "ct2"))
        assert all(torch.equal(t1[n], t2[n]) for n in t1 if n != "activation_function.threshold")


# ---------------------------------------------------------------- a folder written by hand, circuit-tracer's forward


def _ct_plt_folder(root: Path, act="jumprelu", skip=True, model=LLAMA_NAME, hooks=("mlp.hook_in", "mlp.hook_out")):
    root.mkdir(parents=True)
    layers = []
    for i in range(L):
        t = {
            "W_enc": _rand(i, S, D),
            "W_dec": _rand(i + 50, S, D),
            "b_enc": _rand(i + 60, S),
            "b_dec": _rand(i + 70, D),
        }
        if act == "topk":
            t["b_enc"] = t["b_enc"].abs() + 20  # every pre-activation positive: see the module docstring of the reader
        if act == "jumprelu":
            t["activation_function.threshold"] = _rand(i + 80, S).abs()
        if skip:
            t["W_skip"] = _rand(i + 90, D, D) * 0.1
        save_file(t, str(root / f"layer_{i}.safetensors"))
        layers.append(t)
    cfg = {"model_kind": "transcoder_set", "model_name": model, "feature_input_hook": hooks[0]}
    cfg["feature_output_hook"] = hooks[1]
    if act == "topk":
        cfg |= {"activation": "topk", "k": K}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return layers


def _ct_plt_forward(t, x, act):
    """circuit-tracer SingleLayerTranscoder: encode = act(F.linear(x, W_enc, b_enc)), decode = acts @ W_dec +
    b_dec, skip = x @ W_skip.T; JumpReLU x * (x > threshold); TopK keeps the k largest (no ReLU)."""
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    if act == "jumprelu":
        acts = pre * (pre > t["activation_function.threshold"])
    elif act == "topk":
        gate = torch.zeros_like(pre).scatter_(-1, pre.topk(K, dim=-1).indices, 1)
        acts = pre * gate
    else:
        acts = torch.relu(pre)
    out = acts @ t["W_dec"] + t["b_dec"]
    return out + x @ t["W_skip"].T if "W_skip" in t else out


@pytest.mark.parametrize("act,skip", [("jumprelu", True), ("relu", False), ("topk", True)])
def test_handwritten_plt_folder_imports_and_computes_circuit_tracers_forward(tmp_path, act, skip):
    layers = _ct_plt_folder(tmp_path / "ct", act, skip)
    import_circuit_tracer(tmp_path / "ct", tmp_path / "ours")
    m = read_manifest(tmp_path / "ours")
    x = _rand(7, 32, D) * 3
    for i, rel in enumerate(m["dictionaries"]):
        sae = open_sae(tmp_path / "ours" / rel).sae
        assert (sae.cfg.hookpoint, sae.cfg.out_hookpoint) == (LLAMA.mlp_in_site(i), LLAMA.mlp_out_site(i))
        torch.testing.assert_close(sae.reconstruct(x), _ct_plt_forward(layers[i], x, act), rtol=1e-5, atol=1e-5)


def test_gemma2_hooks_map_to_the_sandwich_sites(tmp_path):
    _ct_plt_folder(tmp_path / "ct", "relu", False, "google/gemma-2-2b", ("mlp.hook_in", "hook_mlp_out"))
    import_circuit_tracer(tmp_path / "ct", tmp_path / "ours")
    m = read_manifest(tmp_path / "ours")
    assert m["family"] == "gemma2"
    assert m["input_sites"][1] == "model.layers.1.pre_feedforward_layernorm"
    assert m["output_sites"][1] == "model.layers.1.post_feedforward_layernorm"  # TL hook_mlp_out: after the norm
    shutil_out = tmp_path / "ct_b"
    _ct_plt_folder(shutil_out, "relu", False, "google/gemma-2-2b", ("hook_resid_mid", "mlp.hook_out"))
    import_circuit_tracer(shutil_out, tmp_path / "ours_b")
    m = read_manifest(tmp_path / "ours_b")
    assert m["input_sites"][0] == "model.layers.0.pre_feedforward_layernorm:input"
    assert m["output_sites"][0] == "model.layers.0.mlp"  # TL mlp.hook_out: the MLP's own output, before the norm


# ---------------------------------------------------------------- bad input: one UserError, nothing written


def _bad(tmp_path, match):
    with pytest.raises(UserError, match=match):
        import_circuit_tracer(tmp_path / "ct", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_missing_layer_file(tmp_path):
    _ct_plt_folder(tmp_path / "ct")
    (tmp_path / "ct" / "layer_1.safetensors").unlink()
    _bad(tmp_path, r"layer_1\.safetensors is missing")


def test_shapes_that_disagree(tmp_path):
    layers = _ct_plt_folder(tmp_path / "ct")
    save_file(layers[2] | {"b_enc": torch.zeros(S + 1)}, str(tmp_path / "ct" / "layer_2.safetensors"))
    _bad(tmp_path, r"layer_2\.safetensors: b_enc has shape \(13,\), expected \(12,\)")
    save_file(layers[2] | {"W_dec": torch.zeros(S, D + 1)}, str(tmp_path / "ct" / "layer_2.safetensors"))
    _bad(tmp_path, r"layer_2\.safetensors: b_dec has shape \(8,\), expected \(9,\)")
    wider = {"W_enc": torch.zeros(S + 2, D), "W_dec": torch.zeros(S + 2, D), "b_enc": torch.zeros(S + 2)}
    wider["activation_function.threshold"] = torch.ones(S + 2)
    save_file(layers[2] | wider, str(tmp_path / "ct" / "layer_2.safetensors"))  # consistent in itself
    _bad(tmp_path, "layer 2 disagrees with layer 0")


def test_unknown_model_kind(tmp_path):
    _ct_plt_folder(tmp_path / "ct")
    cfg = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text()) | {"model_kind": "molt"}
    (tmp_path / "ct" / "config.yaml").write_text(yaml.safe_dump(cfg))
    _bad(tmp_path, "unknown model_kind 'molt'")


@pytest.mark.parametrize(
    "hooks,match",
    [
        (("ln2.hook_normalized", "hook_mlp_out"), "no site for the MLP norm's output BEFORE its weight"),
        (("mlp.hook_in", "hook_resid_post"), "feature_output_hook 'hook_resid_post' is not a hook saelab can map"),
    ],
)
def test_hooks_saelab_cannot_map(tmp_path, hooks, match):
    _ct_plt_folder(tmp_path / "ct", hooks=hooks)
    _bad(tmp_path, match)


def test_export_refusals(tmp_path):
    with pytest.raises(UserError, match="circuit-tracer has no gated transcoder"):
        export_circuit_tracer(_plt_replacement(tmp_path / "g", "gated"), tmp_path / "o1")
    with pytest.raises(UserError, match=r"needs every layer from 0.*\[0, 2\]"):
        export_circuit_tracer(_plt_replacement(tmp_path / "p", layers=(0, 2)), tmp_path / "o2")
    with pytest.raises(UserError, match="no replacement.json"):
        export_circuit_tracer(tmp_path / "g" / "layer_0", tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_cli_export_then_import(tmp_path, capsys):
    rep = _plt_replacement(tmp_path / "rep", "topk")
    assert main(["export", str(rep), "--format", "circuit-tracer", "--out", str(tmp_path / "ct")]) == 0
    assert main(["import", str(tmp_path / "ct"), "--out", str(tmp_path / "back")]) == 0
    assert read_manifest(tmp_path / "back")["kind"] == "plt"
    assert main(["export", str(rep), str(rep), "--format", "circuit-tracer", "--out", str(tmp_path / "x")]) == 2
    assert "exports one replacement folder" in capsys.readouterr().err
