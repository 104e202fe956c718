"""bench/circuit_tracer_graph.py: circuit-tracer's own attribution graph of a prompt (run in circuit-tracer's venv,
skipped where it is absent), on a tiny random Llama and a tiny random PLT set exported in circuit-tracer's layout.
Checked against what saelab computes independently (the model's logits and MLP inputs, the transcoders'
activations from their weights), and against saelab's `attribute` once saelab.circuits exists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelab.families import LLAMA
from saelab.sae import SaeConfig, build_sae
from saelab.sae.circuit_tracer_io import export_circuit_tracer
from saelab.sae.folder import Provenance, save_sae
from saelab.sae.replacement import LayerPlan, write_replacement

ROOT = Path(__file__).resolve().parents[1]
CT_PY = Path(os.environ.get("SAELAB_CT_PYTHON", "/work/main/.cache/venvs/circuit-tracer/bin/python"))
SCRIPT = ROOT / "bench" / "circuit_tracer_graph.py"
pytestmark = pytest.mark.skipif(not CT_PY.exists(), reason=f"circuit-tracer's venv ({CT_PY}) is not installed")

D, S, L, K = 64, 48, 4, 4
TOKENS = [1, 504, 3458, 314, 260, 1345, 30, 1097, 285, 3226, 28]  # BOS + 10 tokens of the embedded tokenizer


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, embedded_folder) -> Path:
    """A tiny random Llama saved by transformers 5 with rope_theta 1e5 (`rope_parameters`): what circuit-tracer's
    transformers 4.57 would read as rope_theta 10,000 without the script's config rewrite."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("ct-llama")
    cfg = LlamaConfig(vocab_size=49152, hidden_size=D, intermediate_size=128, num_hidden_layers=L,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e5,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms away from 1, so frozen denominators and weights matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


def plt_set(root: Path, model: Path, arch: str, skip: bool, b_dec: bool) -> tuple[Path, list[dict]]:
    """A replacement folder of random transcoders (one per layer of the tiny Llama), exported to circuit-tracer's
    layout. -> (circuit-tracer folder, the raw weights per layer)."""
    g = torch.Generator().manual_seed(7)
    names, weights = [], []
    for layer in range(L):
        cfg = SaeConfig(arch=arch, d_in=D, d_sae=S, hookpoint=LLAMA.mlp_in_site(layer),
                        out_hookpoint=LLAMA.mlp_out_site(layer), k=K if arch == "topk" else None, skip=skip)  # fmt: skip
        sae = build_sae(cfg)
        t = {"W_enc": torch.randn(D, S, generator=g) * 0.3, "b_enc": torch.randn(S, generator=g) * 0.3 - 0.2,
             "W_dec": torch.randn(S, D, generator=g) * 0.1,
             "b_dec": torch.randn(D, generator=g) * 0.1 if b_dec else torch.zeros(D)}  # fmt: skip
        if skip:
            t["W_skip"] = torch.randn(D, D, generator=g) * 0.05
        sae.load_folded(t)
        weights.append(t)
        names.append(f"layer_{layer}")
        save_sae(sae, root / "rep" / names[-1], Provenance(model_spec=str(model), model_name=str(model), context=64))
    plan = LayerPlan(tuple(range(L)), "llama", L, tuple(map(LLAMA.mlp_in_site, range(L))),
                     tuple(map(LLAMA.mlp_out_site, range(L))))  # fmt: skip
    write_replacement(root / "rep", "plt", plan, str(model), str(model), [root / "rep" / n for n in names])
    return export_circuit_tracer(root / "rep", root / "ct"), weights


def clt_set(root: Path, model: Path) -> Path:
    """A random BatchTopK CLT over the tiny Llama's layers (circuit-tracer holds it as a JumpReLU CLT at its
    per-layer threshold), exported. -> the circuit-tracer folder."""
    g = torch.Generator().manual_seed(11)
    cfg = SaeConfig(arch="clt", d_in=L * D, d_sae=L * S, d_out=L * D, k=K, extra={"clt_sparsity": "batchtopk"},
                    hookpoint="+".join(map(LLAMA.mlp_in_site, range(L))),
                    out_hookpoint="+".join(map(LLAMA.mlp_out_site, range(L))))  # fmt: skip
    sae = build_sae(cfg)
    t = {"W_enc": torch.randn(L, D, S, generator=g) * 0.3, "b_enc": torch.randn(L * S, generator=g) * 0.3,
         "b_dec": torch.randn(L * D, generator=g) * 0.1, "threshold": torch.rand(L, generator=g).repeat_interleave(S) + 1}  # fmt: skip
    t |= {f"W_dec_{i}": torch.randn(S, L - i, D, generator=g) * 0.1 for i in range(L)}
    sae.load_folded(t)
    save_sae(sae, root / "rep" / "clt", Provenance(model_spec=str(model), model_name=str(model), context=64))
    plan = LayerPlan(tuple(range(L)), "llama", L, tuple(map(LLAMA.mlp_in_site, range(L))),
                     tuple(map(LLAMA.mlp_out_site, range(L))))  # fmt: skip
    write_replacement(root / "rep", "clt", plan, str(model), str(model), [root / "rep" / "clt"])
    return export_circuit_tracer(root / "rep", root / "ct")


def run_ct(ct: Path, model: Path, out: Path, *extra: str) -> tuple[dict, dict]:
    cmd = [str(CT_PY), str(SCRIPT), str(ct), "--model", str(model), "--out", str(out), "--threads", "2"]
    cmd += ["--tokens", ",".join(map(str, TOKENS)), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)} | {"HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "result.json").read_text()), load_file(str(out / "graph.safetensors"))


def clean_run(model_dir: Path) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """saelab's own clean run (transformers 5): logits [n_pos, vocab] and each layer's MLP input [n_pos, D]."""
    from saelab.models import load_model

    lm = load_model(str(model_dir)).model
    acts = {}
    hooks = [lm.get_submodule(LLAMA.mlp_in_site(i)).register_forward_hook(
        lambda m, i, o, n=i: acts.__setitem__(n, o[0].detach())) for i in range(L)]  # fmt: skip
    with torch.no_grad():
        logits = lm(torch.tensor([TOKENS])).logits[0]
    for h in hooks:
        h.remove()
    return logits, [acts[i] for i in range(L)]


def expected_activations(weights: list[dict], mlp_in: list[torch.Tensor], arch: str, zero: int) -> torch.Tensor:
    """[L, n_pos, S] what the transcoders compute on the clean MLP inputs (positions < zero zeroed)."""
    out = []
    for t, x in zip(weights, mlp_in, strict=True):
        pre = x @ t["W_enc"] + t["b_enc"]
        if arch == "topk":
            keep = torch.zeros_like(pre).scatter_(-1, pre.topk(K, -1).indices, 1.0)
            pre = pre * keep
        a = pre.relu()
        a[:zero] = 0
        out.append(a)
    return torch.stack(out)


def check_graph(res: dict, g: dict, weights, arch: str, zero: int, logits: torch.Tensor, mlp_in) -> None:
    n_pos, n_sel, n_log = len(TOKENS), len(g["selected_features"]), len(g["logit_targets"])
    n_nodes = n_sel + L * n_pos + n_pos + n_log
    assert g["adjacency"].shape == (n_nodes, n_nodes) and res["n_nodes"] == n_nodes
    assert g["input_tokens"].tolist() == TOKENS and res["n_layers"] == L
    # the model circuit-tracer ran is saelab's (same logits: rope_theta read right), the targets its top logits
    torch.testing.assert_close(g["logits"], logits, rtol=1e-4, atol=1e-4)
    probs = logits[-1].softmax(-1)
    top = probs.topk(n_log)
    assert g["logit_targets"].tolist() == top.indices.tolist()
    torch.testing.assert_close(g["logit_probabilities"], top.values, rtol=1e-4, atol=1e-6)
    # active features and their values = the transcoders' own activations on the clean MLP inputs
    want = expected_activations(weights, mlp_in, arch, zero)
    nz = want.nonzero()
    assert g["active_features"].tolist() == nz.tolist()  # (layer, pos, id), sorted as circuit-tracer sorts
    torch.testing.assert_close(g["activation_values"], want[tuple(nz.T)], rtol=1e-4, atol=1e-5)
    # rows of error and token nodes are empty; logit rows carry no edges into logits
    adj = g["adjacency"]
    assert not adj[n_sel : n_nodes - n_log].any() and not adj[:, n_nodes - n_log :].any()
    # logit rows' inputs are the demeaned logits saelab's model gives
    torch.testing.assert_close(g["row_inputs"][n_sel:], logits[-1, top.indices] - logits[-1].mean(), rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    # pruning: the masks have the graph's shape, tokens and logits are kept, scores are fractions
    assert g["node_mask"].shape == (n_nodes,) and g["node_mask"][-n_log - n_pos :].all()
    assert g["edge_mask"].shape == (n_nodes, n_nodes)
    assert 0 <= res["replacement_score"] <= 1 and 0 <= res["completeness_score"] <= 1
    assert res["time_s"]["attribute"] > 0 and res["memory_mib"]["peak_rss"] > 0


@pytest.mark.filterwarnings("ignore:circuit-tracer 0.5.0")
def test_exact_graph_relu_every_position(tmp_path, tiny_llama):
    """ReLU transcoders without output bias, no zeroed position, every feature a node: each computed row's edges
    sum to its input (pre-activation minus encoder bias; demeaned logit) to float error, which is what makes the
    graph exact; the Neuronpedia JSON is written."""
    ct, weights = plt_set(tmp_path, tiny_llama, "relu", skip=False, b_dec=False)
    res, g = run_ct(ct, tiny_llama, tmp_path / "out", "--zero-positions", "0", "--slug", "tiny")
    logits, mlp_in = clean_run(tiny_llama)
    check_graph(res, g, weights, "relu", 0, logits, mlp_in)
    assert len(g["selected_features"]) == len(g["active_features"]) > 50
    assert res["row_sum_residual"]["all_features_selected"]
    assert res["row_sum_residual"]["features"] < 1e-4 and res["row_sum_residual"]["logits"] < 1e-4
    n_sel = len(g["selected_features"])
    sums = g["adjacency"][:n_sel].sum(1)
    torch.testing.assert_close(sums, g["row_inputs"][:n_sel], rtol=1e-4, atol=1e-4)
    page = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert {"metadata", "nodes", "links", "qParams"} <= set(page)
    assert len(page["metadata"]["prompt_tokens"]) == len(TOKENS)
    kinds = {n["feature_type"] for n in page["nodes"]}
    assert {"embedding", "logit"} <= kinds and len(page["links"]) > 0


@pytest.mark.filterwarnings("ignore:circuit-tracer 0.5.0")
def test_topk_skip_defaults_and_feature_budget(tmp_path, tiny_llama):
    """circuit-tracer's defaults (position 0 without features, a zero error vector there) on a TopK + skip set
    with output biases; saelab's TopK is put back (0.5 would load ReLU); --max-feature-nodes restricts the nodes
    to the most influential features, every row keeping its full column set."""
    ct, weights = plt_set(tmp_path, tiny_llama, "topk", skip=True, b_dec=True)
    res, g = run_ct(ct, tiny_llama, tmp_path / "full")
    logits, mlp_in = clean_run(tiny_llama)
    check_graph(res, g, weights, "topk", 1, logits, mlp_in)
    assert res["activation"] == "topk-saelab"
    af = g["active_features"]
    assert (af[:, 1] > 0).all()  # no feature at position 0
    per_site = torch.bincount(af[:, 0] * len(TOKENS) + af[:, 1])
    assert per_site.max() <= K
    n_sel, n_pos = len(g["selected_features"]), len(TOKENS)
    err0 = [n_sel + layer * n_pos for layer in range(L)]  # error nodes at position 0: zero vectors, no edges out
    assert not g["adjacency"][:, err0].any()
    n = 10
    res2, g2 = run_ct(ct, tiny_llama, tmp_path / "budget", "--max-feature-nodes", str(n), "--no-files")
    assert res2["n_active"] == res["n_active"] and len(g2["selected_features"]) == n == res2["n_selected"]
    assert g2["adjacency"].shape[0] == n + L * n_pos + n_pos + len(g2["logit_targets"])
    # a selected feature's row: the same edges as in the full graph, restricted to the kept columns
    sel = g2["selected_features"]
    full_cols = torch.cat([sel, torch.arange(len(af), g["adjacency"].shape[0])])
    torch.testing.assert_close(g2["adjacency"][:n], g["adjacency"][sel][:, full_cols], rtol=1e-4, atol=1e-5)


def test_bad_folder_refused(tmp_path):
    r = subprocess.run([str(CT_PY), str(SCRIPT), str(tmp_path), "--model", str(tmp_path), "--prompt", "x",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "not a circuit-tracer transcoder folder" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.filterwarnings("ignore:circuit-tracer 0.5.0")
def test_attribution_cost_bench(tmp_path, tiny_llama):
    """bench/attribution_cost.py on the tiny set: prompts of 6 and 9 tokens from the built-in corpus (BOS first,
    one a prefix of the other), each run its own process with its time, peak RSS and feature counts; saelab's
    runs too where saelab.circuits is in this checkout (then both count the same active features)."""
    plt_set(tmp_path, tiny_llama, "topk", skip=False, b_dec=True)
    impls = ["circuit-tracer"] + (["saelab"] if _saelab_attribute() else [])
    cmd = [sys.executable, str(ROOT / "bench" / "attribution_cost.py"), str(tmp_path / "rep"), "--out",
           str(tmp_path / "cost"), "--sizes", "6", "9", "--impls", *impls, "--max-feature-nodes", "20"]  # fmt: skip
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env=os.environ | {"SAELAB_CT_PYTHON": str(CT_PY)}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads((tmp_path / "cost" / "attribution_cost.json").read_text())["runs"]
    assert [(x["n_tokens"], x["impl"]) for x in runs] == [(n, i) for n in (6, 9) for i in impls]
    for x in runs:
        assert x["ok"], x
        assert x["n_active"] > 0 and x["n_selected"] == min(20, x["n_active"]) and x["n_targets"] == 10
        assert x["time_s"]["attribute"] > 0 and x["memory_mib"]["peak_rss"] >= x["memory_mib"]["attribute_peak_rss"] > 0
    ct = [x for x in runs if x["impl"] == "circuit-tracer"]
    assert ct[0]["n_active"] < ct[1]["n_active"] <= 8 * L * K  # more positions, more features; k per site
    if "saelab" in impls:
        for n in (6, 9):
            assert len({x["n_active"] for x in runs if x["n_tokens"] == n}) == 1
    md = (tmp_path / "cost" / "attribution_cost.md").read_text().splitlines()
    assert len(md) == 2 + len(runs) and md[0].startswith("| tokens | impl |")


def _saelab_attribute():
    """saelab's `attribute`, only from this checkout (an editable install elsewhere can supply saelab.circuits)."""
    try:
        from saelab.circuits import attribution
    except ImportError:
        return None
    return attribution.attribute if Path(attribution.__file__).resolve().is_relative_to(ROOT) else None


@pytest.mark.filterwarnings("ignore:circuit-tracer 0.5.0")
@pytest.mark.parametrize(
    "arch,skip,b_dec,budget",
    [("relu", False, False, None), ("topk", True, True, None), ("topk", True, True, 40), ("clt", False, True, None)],
)
def test_saelab_graph_equals_circuit_tracers(tmp_path, tiny_llama, arch, skip, b_dec, budget):
    """saelab's `attribute` on the same replacement and tokens: the same nodes, values, edges and scores (with a
    feature budget of 40 in batches of 4: chosen by influence over three re-rankings, the same features)."""
    attribute = _saelab_attribute()
    if attribute is None:
        pytest.skip("saelab.circuits.attribution is not in this checkout yet")
    from saelab.circuits.prune import graph_scores, prune_graph
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    ct = clt_set(tmp_path, tiny_llama) if arch == "clt" else plt_set(tmp_path, tiny_llama, arch, skip, b_dec)[0]
    extra = ["--max-feature-nodes", str(budget), "--batch-size", "4"] if budget else []
    res, g = run_ct(ct, tiny_llama, tmp_path / "out", "--no-files", *extra)
    model = load_model(str(tiny_llama)).model
    rep = open_replacement(tmp_path / "rep")
    ours = attribute(model, rep, torch.tensor(TOKENS), max_feature_nodes=budget, batch_size=4 if budget else 64)
    assert ours.tokens.tolist() == TOKENS and ours.n_layers == L and len(ours.active_features) > 20
    assert ours.active_features.tolist() == g["active_features"].tolist()
    torch.testing.assert_close(ours.activation_values, g["activation_values"], rtol=1e-4, atol=1e-5)
    assert ours.selected_features.tolist() == g["selected_features"].tolist()
    assert ours.target_tokens.tolist() == g["logit_targets"].tolist()
    torch.testing.assert_close(ours.target_weights, g["logit_probabilities"], rtol=1e-4, atol=1e-6)
    assert ours.adjacency.shape == g["adjacency"].shape
    scale = g["adjacency"].abs().max()
    torch.testing.assert_close(ours.adjacency / scale, g["adjacency"] / scale, rtol=0, atol=1e-5)
    rep_score, comp_score = graph_scores(ours)
    assert rep_score == pytest.approx(res["replacement_score"], abs=1e-4)
    assert comp_score == pytest.approx(res["completeness_score"], abs=1e-4)
    # saelab's pruning of circuit-tracer's own adjacency keeps exactly the nodes and edges circuit-tracer keeps
    ours.adjacency = g["adjacency"].clone()
    pr = prune_graph(ours)
    assert torch.equal(pr.node_mask, g["node_mask"]) and torch.equal(pr.edge_mask, g["edge_mask"])
    torch.testing.assert_close(pr.cumulative_scores, g["cumulative_scores"], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:circuit-tracer 0.5.0")
def test_saelab_graph_json_equals_circuit_tracers(tmp_path, tiny_llama):
    """The Neuronpedia JSON saelab writes for circuit-tracer's adjacency and prune: the same node ids, node
    fields and links as create_graph_files writes."""
    if _saelab_attribute() is None:
        pytest.skip("saelab.circuits is not in this checkout yet")
    from saelab.circuits.neuronpedia import graph_json
    from saelab.circuits.prune import prune_graph
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    ct, _ = plt_set(tmp_path, tiny_llama, "topk", skip=True, b_dec=True)
    _, g = run_ct(ct, tiny_llama, tmp_path / "out", "--slug", "g")
    theirs = json.loads((tmp_path / "out" / "g.json").read_text())
    ours = _saelab_attribute()(load_model(str(tiny_llama)).model, open_replacement(tmp_path / "rep"),
                               torch.tensor(TOKENS), batch_size=64)  # fmt: skip
    ours.adjacency = g["adjacency"].clone()
    doc = graph_json(ours, prune_graph(ours), "g", "scan")
    key = ("feature", "layer", "ctx_idx", "feature_type", "is_target_logit", "reverse_ctx_idx")
    mine = {n["node_id"]: n for n in doc["nodes"]}
    kinds = [n["feature_type"] for n in theirs["nodes"]]
    assert kinds.count("cross layer transcoder") > 5 and kinds.count("mlp reconstruction error") > 0
    assert set(mine) == {n["node_id"] for n in theirs["nodes"]}
    for n in theirs["nodes"]:
        assert {k: mine[n["node_id"]].get(k) for k in key} == {k: n.get(k) for k in key}, n["node_id"]
        for k in ("influence", "activation", "token_prob"):
            if n.get(k) is not None:
                assert mine[n["node_id"]][k] == pytest.approx(n[k], rel=1e-4, abs=1e-6), (n["node_id"], k)
    links = {(x["source"], x["target"]): x["weight"] for x in theirs["links"]}
    assert {(x["source"], x["target"]): pytest.approx(x["weight"], rel=1e-5) for x in doc["links"]} == links


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
