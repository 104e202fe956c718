"""The model-family adapter (saelab/families.py) against the real modules of tiny random Gemma-2, GPT-2
and NeoX models: a feature page's promoted / suppressed tokens are the logits of the decoder direction
through the model's own final norm and head (Gemma's norm scales by 1 + weight, a LayerNorm centres),
`saelab bench --baselines neurons` reads each family's own MLP neurons, and TransformerLens names map
to each family's modules."""

from __future__ import annotations

import json

import pytest
import torch
from test_families import MLP, build_family
from view_helpers import make_sae_folder

from saelab.cli import main
from saelab.families import family_for_name, family_of
from saelab.models import collect_activations, load_model, module_at
from saelab.sae.folder import load_sae
from saelab.sae.foreign_saelens import tl_to_module
from saelab.view.feature_store import FeatureStore

# family -> (its blocks, its final norm module, "rms" | "layer"), spelled out here, not asked of the adapter
REAL = {
    "gemma2": ("model.layers", "model.norm", "rms"),
    "gpt2": ("transformer.h", "transformer.ln_f", "layer"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm", "layer"),
}


@pytest.fixture(scope="module", params=list(REAL))
def fam(request, tmp_path_factory, embedded_folder):
    """A tiny model whose final norm has random weight (and bias): at init Gemma's weight is 0 (scale 1) and a
    LayerNorm's weight 1, bias 0, where a wrong norm and the right one would agree."""
    family = request.param
    folder = build_family(tmp_path_factory.mktemp(family) / "model", family, embedded_folder)
    lm = load_model(str(folder))
    norm = lm.model.get_submodule(REAL[family][1])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=g))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    lm.model.save_pretrained(folder)
    return family, folder, load_model(str(folder))


def test_promoted_tokens_are_the_logits_through_the_real_norm_and_head(fam, tmp_path, text_corpus):
    family, folder, lm = fam
    blocks, norm_path, kind = REAL[family]
    sae_dir = make_sae_folder(tmp_path / "sae", folder, text_corpus, hookpoint=f"{blocks}.1")
    store = FeatureStore.build(sae_dir, tokens=256, model=lm.model, tokenizer=lm.tokenizer, progress=False)
    norm, head = lm.model.get_submodule(norm_path), lm.model.get_output_embeddings()
    eps = getattr(norm, "eps", None) or norm.variance_epsilon
    for i in (0, 7, 33):
        d = store.sae.W_dec[i].detach()
        with torch.no_grad():  # the direction added to a zero residual stream, through the model's own modules
            moved = norm(d[None, None]) - norm(torch.zeros(1, 1, d.shape[0]))  # a LayerNorm's bias moves nothing
            logits = head(moved)[0, 0]
        spread = d.pow(2).mean() if kind == "rms" else d.var(unbiased=False)
        logits = logits * (spread + eps).sqrt()  # the page holds the norm's denominator at 1
        page = store.view(i)
        for shown, want in ((page["promoted"], logits.topk(10)), (page["suppressed"], (-logits).topk(10))):
            assert [t["token"] for t in shown] == [store.tok.decode([int(t)]) for t in want.indices]
            torch.testing.assert_close(
                torch.tensor([abs(t["logit"]) for t in shown]), want.values.abs(), rtol=1e-4, atol=1e-4
            )


def test_bench_neuron_baseline_reads_the_familys_mlp_neurons(fam, tmp_path, text_corpus):
    family, folder, _ = fam
    blocks = REAL[family][0]
    neurons = {
        "gpt2": "transformer.h.1.mlp.c_proj:input",
        "gpt_neox": "gpt_neox.layers.1.mlp.dense_4h_to_h:input",
        "gemma2": "model.layers.1.mlp.down_proj:input",
    }
    sae_dir = make_sae_folder(tmp_path / "sae", folder, text_corpus, hookpoint=f"{blocks}.1")
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                str(sae_dir),
                "--out",
                str(out),
                "--metrics",
                "probing",
                "absorption",
                "--baselines",
                "neurons",
                "--task-scale",
                "0.05",
                "--tokens",
                "256",
                "--ce-tokens",
                "0",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "bench.json").read_text())
    (nd,) = [d for d in manifest["dictionaries"] if d["kind"] == "neurons"]
    assert nd["site"] == neurons[family] and nd["d_lat"] == MLP
    probing = {d["dictionary"]: d for d in json.loads((out / "probing.json").read_text())["dictionaries"]}
    assert 0.0 <= probing[nd["name"]]["mean_accuracy"]["1"] <= 1.0
    absorption = {d["dictionary"]: d for d in json.loads((out / "absorption.json").read_text())["dictionaries"]}
    assert absorption[nd["name"]]["applicable"] is False  # a dense basis, with directions (GPT-2's Conv1D too)


def test_family_sites_are_the_real_modules(fam):
    """MLP input / output / neuron sites of layer l: what the MLP reads, what it adds, its hidden units."""
    family, _, lm = fam
    f = family_of(lm.model)
    ids = torch.randint(3, 1000, (1, 8))
    seen = {}
    mlp = module_at(lm.model, f"{REAL[family][0]}.1.mlp")
    h = mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    try:
        acts = collect_activations(
            lm.model,
            ids,
            [f.mlp_in_site(1), f.mlp_out_site(1), f.neuron_site(1), f.block(0), f.block(1), f.site(1, "attn_out")],
        )
    finally:
        h.remove()
    torch.testing.assert_close(acts[f.mlp_in_site(1)], seen["in"])
    assert acts[f.neuron_site(1)].shape[-1] == MLP
    torch.testing.assert_close(
        acts[f.block(1)], acts[f.block(0)] + acts[f.site(1, "attn_out")] + acts[f.mlp_out_site(1)], atol=1e-5, rtol=1e-4
    )


def test_each_declared_family_agrees_with_the_structure_of_its_models():
    """A declared family names the same sites that reading the model's structure finds (the weightless
    skeleton of each tiny family model), and is the one its config's model_type picks."""
    from test_families import FAMILIES

    from saelab.families import _generic
    from saelab.models import model_skeleton

    want = {
        "gpt2": "gpt2",
        "gpt_neox": "gpt_neox",
        "gemma2": "gemma2",
        "gemma3": "gemma2",
        "qwen2": "llama",
        "qwen3": "llama",
        "mistral": "llama",
        "llama": "llama",
    }
    for name, make in FAMILIES.items():
        skeleton = model_skeleton(make()[0])
        f = family_of(skeleton)
        assert f.name == want[name]
        assert f.hookpoints(skeleton) == _generic(skeleton).hookpoints(skeleton)
        assert f.final_norm == _generic(skeleton).final_norm and f.norm == _generic(skeleton).norm


@pytest.mark.parametrize(
    "model_name,hook,ours",
    [
        ("gpt2-small", "blocks.3.hook_resid_mid", "transformer.h.3.ln_2:input"),
        ("gpt2-small", "blocks.3.hook_attn_out", "transformer.h.3.attn"),
        ("gpt2-small", "blocks.3.mlp.hook_post", "transformer.h.3.mlp.c_proj:input"),
        ("pythia-70m-deduped", "blocks.2.hook_mlp_out", "gpt_neox.layers.2.mlp"),
        ("pythia-70m-deduped", "blocks.2.hook_resid_pre", "gpt_neox.layers.2:input"),
        ("gemma-2-2b", "blocks.5.hook_mlp_out", "model.layers.5.post_feedforward_layernorm"),
        ("gemma-2-2b", "blocks.5.hook_attn_out", "model.layers.5.post_attention_layernorm"),
        ("gemma-2-2b", "blocks.5.hook_resid_mid", "model.layers.5.pre_feedforward_layernorm:input"),
        ("google/gemma-2b", "blocks.5.hook_mlp_out", "model.layers.5.mlp"),
        ("meta-llama/Llama-3.1-8B", "blocks.4.hook_attn_out", "model.layers.4.self_attn"),
        (None, "blocks.4.hook_resid_post", "model.layers.4"),
        (None, "model.layers.4.mlp", "model.layers.4.mlp"),
    ],
)
def test_transformerlens_names_follow_the_family(model_name, hook, ours):
    assert tl_to_module(hook, model_name=model_name) == ours


def test_tl_names_land_on_modules_of_the_loaded_model(fam):
    """Every TransformerLens name the adapter maps names a module of a real model of that family."""
    family, _, lm = fam
    names = {"gemma2": "gemma-2-2b", "gpt2": "gpt2", "gpt_neox": "pythia-160m"}
    f = family_for_name(names[family])
    assert f.blocks == family_of(lm.model).blocks
    for hook in (
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_mlp_out",
        "hook_attn_out",
        "mlp.hook_post",
    ):
        site = f.tl_site(f"blocks.1.{hook}")
        module_at(lm.model, site)  # raises if the module does not exist
    assert (
        tl_to_module("blocks.1.hook_mlp_out", prefix="model.language_model.", model_name="llama")
        == "model.language_model.layers.1.mlp"
    )


def test_a_saelens_folder_of_gpt2_gets_gpt2_module_names(tmp_path):
    from test_interop import _saelens_folder

    _saelens_folder(
        tmp_path / "a",
        "topk",
        v6=False,
        extra_cfg={"hook_name": "blocks.4.hook_resid_post", "model_name": "gpt2-small"},
    )
    sae, _ = load_sae(tmp_path / "a")
    assert sae.cfg.hookpoint == "transformer.h.4"
