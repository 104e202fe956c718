"""Attribution graphs are exact (issue 32, item 2): with attention and norms frozen and error nodes included,
the edges into a node sum to its actual input, computed here independently from the clean model (a
feature's pre-activation minus its bias from the dictionary's own encode, a logit's demeaned value from the
model's logits), on two model families, PLT sets (with and without skip) and a CLT; and a circuit planted in
a hand-built model (a token drives a feature, which drives a logit through an attention head) is the
graph's strongest path."""

from __future__ import annotations

import shutil

import pytest
import torch
from circuit_helpers import tiny_clt, tiny_plt

from saelab.circuits.attribution import AttributionTarget, attribute
from saelab.circuits.prune import node_influence, target_weight_vector
from saelab.models import collect_activations, load_model
from saelab.sae.replacement import open_replacement

PROMPT = torch.tensor([1, 520, 33, 4000, 77, 9, 12])


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, embedded_folder):
    """A tiny GPT-2 with random biases everywhere (attention, MLP, LayerNorms), so constants are not zero."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("attr-gpt2")
    torch.manual_seed(1)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=64, n_layer=3, n_head=4, n_positions=64))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


def _independent_inputs(model, rep, graph):
    """Each feature row's input (x . encoder, from the clean forward and the dictionary's own pre-activation)
    and each logit row's demeaned logit, computed without the attribution code."""
    sites = rep.input_sites
    acts = collect_activations(model, graph.tokens.view(1, -1), sites)
    out = {}
    for node in range(graph.n_sel):
        layer, pos, fid = graph.active_features[graph.selected_features[node]].tolist()
        x = acts[sites[rep.layers.index(layer)]][0, pos]
        if rep.kind == "plt":
            sae = rep.dictionaries[rep.layers.index(layer)]
            pre = sae.preacts(sae.encoder_input(x[None]))[0, fid] - sae.encoder_bias()[fid]
        else:
            clt, i = rep.dictionaries[0], rep.layers.index(layer)
            x_in = x * clt.in_scale[i * clt.d_site_in : (i + 1) * clt.d_site_in]
            pre = x_in @ clt.W_enc[i][:, fid]
        out[node] = float(pre.detach())
    logits = model(graph.tokens.view(1, -1)).logits[0, -1].double()
    for i, tok in enumerate(graph.target_tokens.tolist()):
        out[graph.target_start + i] = float(logits[tok] - logits.mean())
    return out


@pytest.mark.parametrize("kind", ["plt", "skip", "clt"])
def test_edges_sum_to_each_nodes_input_on_a_llama(kind, tiny_model_dir, tmp_path):
    """No model biases (Llama), no dictionary output bias and no zeroed position: nothing is constant, so
    every feature row and logit row sums exactly to the node's input."""
    lm = load_model(str(tiny_model_dir))
    if kind == "clt":
        rep = open_replacement(tiny_clt(tiny_model_dir, tmp_path / "r", bias=0.0))
        with torch.no_grad():
            rep.dictionaries[0].b_dec.zero_()
    else:
        rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "r", skip=kind == "skip", bias=0.0))
    graph = attribute(lm.model, rep, PROMPT, zero_positions=0, progress=False)
    assert graph.n_sel == graph.meta["n_active_features"] > 20
    want = _independent_inputs(lm.model, rep, graph)
    got = graph.adjacency.double().sum(1)
    scale = graph.adjacency.double().abs().sum(1)  # float32 rounding grows with the edges that cancel
    for node, value in want.items():
        assert abs(got[node].item() - value) <= 1e-5 * (scale[node].item() + abs(value)), node
    assert graph.meta["exactness"] < 1e-5
    # token and error rows have no inputs; a feature receives nothing from its own or a later layer
    assert not graph.adjacency[graph.error_start : graph.target_start].any()
    layers = graph.active_features[graph.selected_features, 0]
    into, frm = torch.nonzero(graph.adjacency[: graph.n_sel, : graph.n_sel], as_tuple=True)
    assert (layers[frm] < layers[into]).all()


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_with_biases_edges_plus_the_constant_part_are_exact_on_gpt2(kind, tiny_gpt2, tmp_path):
    """GPT-2 has biases in every attention, MLP and norm, the dictionaries output biases, position 0 is zeroed:
    the graph records the worst residual of input = edges + constant, and it is at float precision."""
    lm = load_model(str(tiny_gpt2))
    maker = tiny_clt if kind == "clt" else tiny_plt
    rep = open_replacement(maker(tiny_gpt2, tmp_path / "r"))
    graph = attribute(lm.model, rep, PROMPT, progress=False)
    assert graph.meta["exactness"] < 1e-5
    assert not (graph.active_features[:, 1] == 0).any()  # the attention sink has no feature nodes
    assert not graph.adjacency[:, graph.error_index(0, 0)].any()


def test_custom_targets_logit_difference_and_a_feature(tiny_model_dir, tmp_path):
    lm = load_model(str(tiny_model_dir))
    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "r", bias=0.0))
    diff = attribute(
        lm.model, rep, PROMPT, targets=[AttributionTarget.logit_diff(7, 9)], zero_positions=0, progress=False
    )
    logits = lm.model(PROMPT.view(1, -1)).logits[0, -1]
    assert diff.n_targets == 1 and diff.target_tokens.tolist() == [-1]
    assert diff.adjacency[-1].sum().item() == pytest.approx(float(logits[7] - logits[9]), abs=1e-4)
    layer, pos, fid = diff.active_features[-1].tolist()  # a feature of the last layer
    feat = attribute(
        lm.model, rep, PROMPT, targets=[AttributionTarget.of_feature(layer, pos, fid)], zero_positions=0, progress=False
    )
    i = int(((feat.active_features == torch.tensor([layer, pos, fid])).all(1)).nonzero())
    node = int((feat.selected_features == i).nonzero())
    assert torch.allclose(feat.adjacency[-1], feat.adjacency[node], atol=1e-6)  # the target's row is that feature's


def test_max_feature_nodes_keeps_the_most_influential(tiny_model_dir, tmp_path):
    lm = load_model(str(tiny_model_dir))
    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "r"))
    full = attribute(lm.model, rep, PROMPT, progress=False)
    part = attribute(lm.model, rep, PROMPT, max_feature_nodes=10, batch_size=2, progress=False)
    assert part.n_sel == 10 and torch.equal(part.active_features, full.active_features)
    infl = node_influence(full.adjacency, target_weight_vector(full))[: full.n_sel]
    top = set(full.selected_features[torch.topk(infl, 3).indices].tolist())
    assert top <= set(part.selected_features.tolist())  # the three strongest are never left out


# ---------------------------------------------------------------- a planted circuit
X, T = 500, 4321  # the driving token and the target token


@pytest.fixture(scope="module")
def planted(tmp_path_factory, embedded_folder):
    """A 2-layer Llama where token X (position 1) makes layer 0's MLP write u (a SwiGLU unit tuned to X),
    layer 1's attention head 0 copies u from position 1 to the last position as w, and the unembedding of T
    reads w. Layer 0's transcoder has feature 3 = that unit (encoder along X's normed embedding, decoder
    matching the MLP's output); every other feature and layer 1's MLP are weak."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("planted")
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    m = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(4)
    u, w = torch.randn(64, generator=g), torch.randn(64, generator=g)
    u, w = u / u.norm(), w / w.norm()
    with torch.no_grad():
        emb = m.model.embed_tokens.weight
        emb.mul_(8.0 / emb.norm(dim=1, keepdim=True))  # |e| = 8 = sqrt(d): the norm leaves embeddings as they are
        e_hat = emb[X] / emb[X].norm()
        L0, L1 = m.model.layers
        L0.self_attn.o_proj.weight.zero_()  # layer 0's attention adds nothing
        for p in (L0.mlp.gate_proj.weight, L0.mlp.up_proj.weight, L0.mlp.down_proj.weight):
            p.zero_()
        L0.mlp.gate_proj.weight[0] = e_hat
        L0.mlp.up_proj.weight[0] = e_hat
        L0.mlp.down_proj.weight[:, 0] = u  # writes silu(e.x) (e.x) u: ~64 u at X, small elsewhere
        L1.mlp.down_proj.weight.zero_()
        L1.self_attn.v_proj.weight.zero_()
        L1.self_attn.o_proj.weight.zero_()
        L1.self_attn.v_proj.weight[0] = u  # kv head 0, dim 0 reads u
        L1.self_attn.o_proj.weight[:, 0] = 10 * w  # query head 0 writes it as w
        m.lm_head.weight.mul_(0.1)
        m.lm_head.weight[T] = 5 * w
    m.save_pretrained(folder / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / "model" / name)
    rep_dir = tiny_plt(folder / "model", folder / "rep", n=16, k=1, bias=0.0)
    rep = open_replacement(rep_dir)
    with torch.no_grad():
        for sae in rep.dictionaries:
            sae.W_enc.mul_(0.05)
            sae.W_dec.mul_(0.01)
        t0 = rep.dictionaries[0]
        t0.W_enc[:, 3] = e_hat / t0.in_scale
        x1 = 8.0  # e_hat . normed X embedding
        t0.W_dec[3] = u * (torch.nn.functional.silu(torch.tensor(x1)) * x1 / x1) * t0.out_scale
    lm = load_model(str(folder / "model"))
    return lm, rep


def test_the_planted_circuit_is_the_strongest_path(planted):
    lm, rep = planted
    tokens = torch.tensor([1, X, 33, 4000, 77])
    graph = attribute(lm.model, rep, tokens, progress=False)
    assert graph.target_tokens[0].item() == T and graph.target_weights[0] > 0.9  # the model predicts T
    assert graph.meta["exactness"] < 1e-5
    feats = graph.active_features[graph.selected_features]
    planted_node = int(((feats == torch.tensor([0, 1, 3])).all(1)).nonzero())
    infl = node_influence(graph.adjacency, target_weight_vector(graph))
    assert int(infl[: graph.n_sel].argmax()) == planted_node  # the most influential feature
    t_row = graph.adjacency[graph.target_index(0)]
    assert int(t_row[: graph.n_sel].abs().argmax()) == planted_node  # its strongest feature edge into T
    assert t_row[planted_node] > 0
    f_row = graph.adjacency[planted_node]
    assert int(f_row.abs().argmax()) == graph.token_index(1)  # driven by token X


def test_exact_on_the_embedded_model(embedded_folder, tmp_path):
    """The real path: the embedded SmolLM2 (30 layers, grouped-query attention) with a small random PLT set."""
    lm = load_model("embedded")
    rep = open_replacement(tiny_plt(embedded_folder, tmp_path / "r", n=32, k=2))
    tokens = lm.tokenizer("def add(a, b):\n    return a +", return_tensors="pt").input_ids[0]
    graph = attribute(lm.model, rep, tokens, progress=False, tokenizer=lm.tokenizer)
    assert graph.meta["exactness"] < 1e-5
    assert graph.n_sel == 30 * (len(tokens) - 1) * 2
    assert graph.target_labels[0] == " b"  # the model's top next token
