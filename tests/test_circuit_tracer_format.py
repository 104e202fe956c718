"""circuit-tracer interop: a saelab replacement folder exported in circuit-tracer's layout (config.yaml +
layer_{l}.safetensors, or W_enc_{l} / W_dec_{l} for a CLT) imports back with bit-identical weights; a folder
written by hand in that layout (tiny shapes) imports into transcoders that compute what circuit-tracer
computes (re-implemented in ct_helpers.py from circuit_tracer/transcoder/single_layer_transcoder.py and
cross_layer_transcoder.py); bad folders give one UserError before anything is written."""

from pathlib import Path

import pytest
import torch
import yaml
from ct_helpers import ct_clt_forward, ct_plt_forward, make_tiny_gemma2, mlp_norm_io, rand
from safetensors.torch import load_file, save_file

from saelab.cli import main
from saelab.errors import UserError
from saelab.families import LLAMA
from saelab.sae import SaeConfig, build_sae
from saelab.sae.circuit_tracer_io import export_circuit_tracer, import_circuit_tracer, read_manifest, write_manifest
from saelab.sae.folder import Provenance, open_sae, save_sae

D, S, L, K = 8, 12, 3, 3
LLAMA_NAME = "meta-llama/Llama-3.2-1B"


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
        t = {"W_enc": rand(s, D, S), "b_enc": rand(s + 1, S), "W_dec": rand(s + 2, S, D), "b_dec": rand(s + 3, D)}
        t["threshold"] = rand(s + 4, S).abs() * 0.5
        if skip:
            t["W_skip"] = rand(s + 5, D, D) * 0.1
        if arch != "gated":  # (a gated SAE has more tensors; its random start is enough to be refused)
            sae.load_folded(t)
        names.append(f"layer_{layer}")
        save_sae(sae, root / names[-1], Provenance(model_spec=LLAMA_NAME, model_name=LLAMA_NAME, context=64))
    ins = [fam.mlp_in_site(i) for i in layers]
    outs = [fam.mlp_out_site(i) for i in layers]
    write_manifest(root, "plt", LLAMA_NAME, fam, list(layers), ins, outs, names)
    return root


WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")


@pytest.mark.filterwarnings("ignore:circuit-tracer 0.5.0")
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
            "W_enc": rand(i, S, D),
            "W_dec": rand(i + 50, S, D),
            "b_enc": rand(i + 60, S),
            "b_dec": rand(i + 70, D),
        }
        if act == "topk":
            t["b_enc"] = t["b_enc"].abs() + 20  # every pre-activation positive: see the module docstring of the reader
        if act == "jumprelu":
            t["activation_function.threshold"] = rand(i + 80, S).abs()
        if skip:
            t["W_skip"] = rand(i + 90, D, D) * 0.1
        save_file(t, str(root / f"layer_{i}.safetensors"))
        layers.append(t)
    cfg = {"model_kind": "transcoder_set", "model_name": model, "feature_input_hook": hooks[0]}
    cfg["feature_output_hook"] = hooks[1]
    if act == "topk":
        cfg |= {"activation": "topk", "k": K}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return layers


@pytest.mark.parametrize("act,skip", [("jumprelu", True), ("relu", False), ("topk", True)])
def test_handwritten_plt_folder_imports_and_computes_circuit_tracers_forward(tmp_path, act, skip):
    layers = _ct_plt_folder(tmp_path / "ct", act, skip)
    import_circuit_tracer(tmp_path / "ct", tmp_path / "ours")
    m = read_manifest(tmp_path / "ours")
    x = rand(7, 32, D) * 3
    for i, rel in enumerate(m["dictionaries"]):
        sae = open_sae(tmp_path / "ours" / rel).sae
        assert (sae.cfg.hookpoint, sae.cfg.out_hookpoint) == (LLAMA.mlp_in_site(i), LLAMA.mlp_out_site(i))
        torch.testing.assert_close(sae.reconstruct(x), ct_plt_forward(layers[i], x, act, K), rtol=1e-5, atol=1e-5)


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


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory, embedded_folder) -> Path:
    return make_tiny_gemma2(tmp_path_factory.mktemp("tiny-gemma2"), embedded_folder, D, L)


@pytest.mark.parametrize("act", ["jumprelu", "relu"])
def test_ln2_hook_normalized_folds_the_mlp_norms_scale(tmp_path, tiny_gemma2, act):
    """Gemma Scope transcoders read ln2.hook_normalized = x / rms(x) before the norm's 1 + weight; with --model the
    scale folds into the encoder and the transcoder reads saelab's pre_feedforward_layernorm output."""
    layers = _ct_plt_folder(tmp_path / "ct", act, True, "google/gemma-2-2b", ("ln2.hook_normalized", "hook_mlp_out"))
    import_circuit_tracer(tmp_path / "ct", tmp_path / "ours", model=str(tiny_gemma2))
    m = read_manifest(tmp_path / "ours")
    assert m["model"] == {"spec": str(tiny_gemma2), "name": "google/gemma-2-2b"} and m["family"] == "gemma2"
    for i in range(L):
        u, y = mlp_norm_io(tiny_gemma2, i)
        sae = open_sae(tmp_path / "ours" / m["dictionaries"][i]).sae
        assert sae.cfg.hookpoint == f"model.layers.{i}.pre_feedforward_layernorm"
        torch.testing.assert_close(sae.reconstruct(y), ct_plt_forward(layers[i], u, act), rtol=1e-4, atol=1e-4)


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
    with pytest.warns(UserWarning, match="loads as ReLU"):  # circuit-tracer's local-folder path drops topk
        assert main(["export", str(rep), "--format", "circuit-tracer", "--out", str(tmp_path / "ct")]) == 0
    assert main(["import", str(tmp_path / "ct"), "--out", str(tmp_path / "back")]) == 0
    assert read_manifest(tmp_path / "back")["kind"] == "plt"
    assert main(["export", str(rep), str(rep), "--format", "circuit-tracer", "--out", str(tmp_path / "x")]) == 2
    assert "exports one replacement folder" in capsys.readouterr().err


# ---------------------------------------------------------------- cross-layer transcoders


def _clt_replacement(root: Path, sparsity="batchtopk") -> Path:
    cfg = SaeConfig(
        arch="clt",
        d_in=L * D,
        d_sae=L * S,
        d_out=L * D,
        hookpoint="+".join(LLAMA.mlp_in_site(i) for i in range(L)),
        out_hookpoint="+".join(LLAMA.mlp_out_site(i) for i in range(L)),
        k=K,
        extra={"clt_sparsity": sparsity},
    )
    sae = build_sae(cfg)
    t = {"W_enc": rand(1, L, D, S), "b_enc": rand(2, L * S), "b_dec": rand(3, L * D)}
    t |= {f"W_dec_{i}": rand(10 + i, S, L - i, D) for i in range(L)}
    t["threshold"] = rand(4, L).abs().repeat_interleave(S)
    sae.load_folded(t)
    save_sae(sae, root / "clt", Provenance(model_spec=LLAMA_NAME, model_name=LLAMA_NAME, context=64))
    ins = [LLAMA.mlp_in_site(i) for i in range(L)]
    write_manifest(
        root, "clt", LLAMA_NAME, LLAMA, list(range(L)), ins, [LLAMA.mlp_out_site(i) for i in range(L)], ["clt"]
    )
    return root


def test_clt_export_layout_and_round_trip_bit_exact(tmp_path):
    rep = _clt_replacement(tmp_path / "rep")
    export_circuit_tracer(rep, tmp_path / "ct")
    cfg = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder" and cfg["k"] == K
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("mlp.hook_in", "mlp.hook_out")
    ours = open_sae(rep / "clt").sae.folded_state()
    for i in range(L):
        e = load_file(str(tmp_path / "ct" / f"W_enc_{i}.safetensors"))
        d = load_file(str(tmp_path / "ct" / f"W_dec_{i}.safetensors"))
        assert set(e) == {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}", f"threshold_{i}"} and set(d) == {f"W_dec_{i}"}
        assert torch.equal(e[f"W_enc_{i}"], ours["W_enc"][i].t())  # circuit-tracer: [d_transcoder, d_model]
        assert torch.equal(e[f"b_enc_{i}"], ours["b_enc"].view(L, S)[i])
        assert torch.equal(e[f"b_dec_{i}"], ours["b_dec"].view(L, D)[i])
        assert torch.equal(d[f"W_dec_{i}"], ours[f"W_dec_{i}"]) and d[f"W_dec_{i}"].shape == (S, L - i, D)
        assert torch.equal(e[f"threshold_{i}"], ours["threshold"].view(L, S)[i])
    import_circuit_tracer(tmp_path / "ct", tmp_path / "back")
    m = read_manifest(tmp_path / "back")
    assert m["kind"] == "clt" and m["dictionaries"] == ["clt"] and m["input_sites"][2] == LLAMA.mlp_in_site(2)
    back = open_sae(tmp_path / "back" / "clt").sae
    assert back.sparsity == "batchtopk" and back.cfg.k == K
    fb = back.folded_state()
    assert set(fb) == set(ours) and all(torch.equal(fb[n], ours[n]) for n in ours)


def _ct_clt_folder(root: Path, thresholds=True, per_layer=True):
    root.mkdir(parents=True)
    layers = []
    for i in range(L):
        t = {f"W_enc_{i}": rand(i, S, D), f"b_enc_{i}": rand(i + 20, S), f"b_dec_{i}": rand(i + 30, D)}
        if thresholds:
            thr = torch.full((S,), 0.3 * (i + 1)) if per_layer else rand(i + 40, S).abs()
            t[f"threshold_{i}"] = thr
        save_file(t, str(root / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": rand(i + 50, S, L - i, D)}, str(root / f"W_dec_{i}.safetensors"))
        layers.append(t | load_file(str(root / f"W_dec_{i}.safetensors")))
    cfg = {"model_kind": "cross_layer_transcoder", "model_name": LLAMA_NAME}
    cfg |= {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return layers


def test_handwritten_clt_folder_imports_and_computes_circuit_tracers_forward(tmp_path):
    layers = _ct_clt_folder(tmp_path / "ct")
    import_circuit_tracer(tmp_path / "ct", tmp_path / "ours")
    sae = open_sae(tmp_path / "ours" / "clt").sae
    xs = [rand(100 + i, 32, D) * 2 for i in range(L)]
    want = ct_clt_forward(layers, xs)
    torch.testing.assert_close(sae.reconstruct(torch.cat(xs, -1)), torch.cat(want, -1), rtol=1e-5, atol=1e-5)
    lats = [sae.encode_layer(i, xs[i]) for i in range(L)]  # the raw-space API replacement models use
    for t in range(L):
        got = sum(sae.decode_layer(s, lats[s], t) for s in range(t + 1)) + sae.output_bias(t)
        torch.testing.assert_close(got, want[t], rtol=1e-5, atol=1e-5)


def test_clt_refusals(tmp_path):
    _ct_clt_folder(tmp_path / "ct", thresholds=False)
    _bad(tmp_path, "a relu cross-layer transcoder has no saelab form")
    _ct_clt_folder(tmp_path / "ct2", per_layer=False)
    with pytest.raises(UserError, match="thresholds differ between latents"):
        import_circuit_tracer(tmp_path / "ct2", tmp_path / "ours")
    (tmp_path / "ct2" / "W_dec_1.safetensors").unlink()
    with pytest.raises(UserError, match=r"W_dec_1\.safetensors is missing"):
        import_circuit_tracer(tmp_path / "ct2", tmp_path / "ours")
    save_file({"W_dec_1": torch.zeros(S, L, D)}, str(tmp_path / "ct2" / "W_dec_1.safetensors"))
    with pytest.raises(UserError, match=r"W_dec_1 has shape \(12, 3, 8\), expected \(12, 2, 8\)"):
        import_circuit_tracer(tmp_path / "ct2", tmp_path / "ours")
    with pytest.raises(UserError, match="a topk CLT has no form there"):
        export_circuit_tracer(_clt_replacement(tmp_path / "rep", "topk"), tmp_path / "o")
    assert not (tmp_path / "ours").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- circuit-tracer itself, where it is installed


@pytest.mark.parametrize("kind", ["plt-jumprelu-skip", "plt-relu", "clt"])
def test_circuit_tracer_loads_the_exported_folder(tmp_path, kind):
    """Only where circuit-tracer is installed (not a saelab dependency; docs/research/circuits.md records a
    run with circuit-tracer 0.5.0): its own loader for an absolute path (load_transcoder_from_hub ->
    caching.load_transcoders_from_cache) reads the exported folder and computes what saelab computes."""
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    if kind == "clt":
        rep = _clt_replacement(tmp_path / "rep")
    else:
        rep = _plt_replacement(tmp_path / "rep", kind.split("-")[1], kind.endswith("skip"))
    export_circuit_tracer(rep, tmp_path / "ct")
    tc, _ = load_transcoder_from_hub(str(tmp_path / "ct"), device=torch.device("cpu"), dtype=torch.float32)
    assert (tc.feature_input_hook, tc.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
    xs = torch.stack([rand(70 + i, 16, D) * 2 for i in range(L)])  # [layers, positions, d]
    with torch.no_grad():
        if kind == "clt":
            ours = open_sae(rep / "clt").sae.reconstruct(xs.transpose(0, 1).reshape(16, L * D))
            theirs = tc.decode(tc.encode(xs))  # [layers, positions, d]
            torch.testing.assert_close(ours, theirs.transpose(0, 1).reshape(16, L * D), rtol=1e-5, atol=1e-5)
        else:
            for i in range(L):
                ours = open_sae(rep / f"layer_{i}").sae.reconstruct(xs[i])
                torch.testing.assert_close(ours, tc[i](xs[i]), rtol=1e-5, atol=1e-5)
    # and what circuit-tracer itself writes (to_safetensors; the config.yaml beside it) imports back, bit for bit
    tc.to_safetensors(str(tmp_path / "ct2"))
    (tmp_path / "ct2" / "config.yaml").write_text((tmp_path / "ct" / "config.yaml").read_text())
    import_circuit_tracer(tmp_path / "ct2", tmp_path / "back")
    for rel in read_manifest(tmp_path / "back")["dictionaries"]:
        fa, fb = open_sae(rep / rel).sae.folded_state(), open_sae(tmp_path / "back" / rel).sae.folded_state()
        assert all(torch.equal(fa[n], fb[n]) for n in fa if n != "threshold" or kind == "clt")


def test_export_refuses_sites_and_mixtures_circuit_tracer_cannot_hold(tmp_path):
    """An SAE (not a transcoder), a transcoder between sites circuit-tracer has no hook for, layers with
    different activations: each refused with its reason before anything is written."""
    rep = _plt_replacement(tmp_path / "rep")
    for i, (hook, out_hook) in enumerate(
        [(LLAMA.mlp_in_site(0), None), ("model.layers.0", LLAMA.mlp_out_site(0))]  # an SAE; a resid_post input
    ):
        sae = build_sae(SaeConfig(arch="relu", d_in=D, d_sae=S, hookpoint=hook, out_hookpoint=out_hook))
        save_sae(sae, rep / "layer_0", Provenance(model_spec=LLAMA_NAME, model_name=LLAMA_NAME, context=64))
        match = ["is not a transcoder", r"model\.layers\.0 \(layer 0\) is not a site circuit-tracer names"][i]
        with pytest.raises(UserError, match=match):
            export_circuit_tracer(rep, tmp_path / f"o{i}")
    sae = build_sae(SaeConfig(arch="relu", d_in=D, d_sae=S, hookpoint=LLAMA.mlp_in_site(0)))
    sae.cfg.out_hookpoint = LLAMA.mlp_out_site(0)
    save_sae(sae, rep / "layer_0", Provenance(model_spec=LLAMA_NAME, model_name=LLAMA_NAME, context=64))
    with pytest.raises(UserError, match="one activation for every layer"):  # relu at layer 0, jumprelu after
        export_circuit_tracer(rep, tmp_path / "o2")
    assert not any((tmp_path / f"o{i}").exists() for i in range(3))
