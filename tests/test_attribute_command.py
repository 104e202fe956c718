"""`saelab attribute` end to end on a tiny random llama and a random per-layer transcoder set: the graph folder
reads back (graph + Neuronpedia JSON), every link of the JSON is the graph's edge, the scores recorded are the
ones the pruning module computes, targets follow the options, and a second run needs --overwrite."""

from __future__ import annotations

import json

import pytest
from circuit_helpers import tiny_plt

from saelab.circuits.graph import load_graph
from saelab.circuits.neuronpedia import read_graph_json
from saelab.circuits.prune import graph_scores, prune_graph
from saelab.cli import main
from saelab.errors import UserError

PROMPT = "def add(a, b): return a +"


@pytest.fixture(scope="module")
def rep(tmp_path_factory, tiny_model_dir):
    return tiny_plt(tiny_model_dir, tmp_path_factory.mktemp("rep") / "plt")


def node_index(g, n: dict) -> int:
    """The graph's node index of a JSON node, from its kind, layer and position."""
    kind, pos = n["feature_type"], n["ctx_idx"]
    if kind == "embedding":
        return g.token_index(pos)
    if kind == "mlp reconstruction error":
        return g.error_index(int(n["layer"]), pos)
    if kind == "logit":
        return g.target_index(next(i for i, t in enumerate(g.target_tokens.tolist()) if t == n["feature"]))
    key = [n["feature_layer"], pos, n["feature_id"]]
    return next(i for i in range(g.n_sel) if list(g.feature(i)) == key)


def test_attribute_writes_a_graph_that_reads_back(rep, tmp_path, capsys):
    out = tmp_path / "add"
    assert main(["attribute", str(rep), "--prompt", PROMPT, "--out", str(out), "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "replacement score" in err and "add.json" in err
    g = load_graph(out)
    assert g.prompt == PROMPT and g.n_layers == 4 and g.n_targets >= 1
    assert g.meta["slug"] == "add" and g.meta["replacement"] == str(rep)
    assert g.activation_values.gt(0).all() and (g.active_features[:, 1] >= 1).all()  # nothing at the sink
    rep_score, comp = graph_scores(g)
    assert g.meta["scores"] == {"replacement": rep_score, "completeness": comp}
    v = read_graph_json(out / "add.json")
    assert v.metadata["prompt"] == PROMPT and v.metadata["prompt_tokens"] == g.token_strings
    assert v.metadata["saelab"]["replacement_score"] == rep_score
    # the JSON's nodes are the kept ones; each link is the graph's edge between them
    pruned = prune_graph(g, 0.8, 0.98)
    index = {n["node_id"]: node_index(g, n) for n in v.nodes}
    assert all(pruned.node_mask[index[n["node_id"]]] for n in v.nodes)
    assert len(v.links) > 0
    for link in v.links:
        s, t = index[link["source"]], index[link["target"]]
        assert pruned.edge_mask[t, s] and link["weight"] == pytest.approx(float(g.adjacency[t, s]))
    assert sum(n["feature_type"] == "logit" for n in v.nodes) == g.n_targets
    assert sum(n["feature_type"] == "embedding" for n in v.nodes) == g.n_pos
    # a second run: refused without --overwrite, replaced with it (another target)
    assert main(["attribute", str(rep), "--prompt", PROMPT, "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    argv = ["attribute", str(rep), "--prompt", PROMPT, "--out", str(out), "--target", " b", "--overwrite"]
    assert main([*argv, "--slug", "add-b"]) == 0
    g2 = load_graph(out)
    assert g2.target_labels == [" b"] and g2.n_targets == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "add-b.json",
        "graph-metadata.json",
        "graph.json",
        "graph.safetensors",
    ]
    assert [x["slug"] for x in json.loads((out / "graph-metadata.json").read_text())["graphs"]] == ["add-b"]


def test_feature_target_and_max_feature_nodes(rep, tmp_path, capsys):
    first = tmp_path / "all"
    assert main(["attribute", str(rep), "--prompt", PROMPT, "--out", str(first), "--max-feature-nodes", "0"]) == 0
    g = load_graph(first)
    assert g.n_sel == g.active_features.shape[0]  # 0: every active feature
    last = g.n_pos - 1
    layer, pos, fid = next(f for f in g.active_features.tolist() if f[0] == 3 and f[1] == last)
    out = tmp_path / "feat"
    argv = ["attribute", str(rep), "--prompt", PROMPT, "--out", str(out), "--target-feature", f"3:-1:{fid}"]
    assert main([*argv, "--max-feature-nodes", "5"]) == 0
    h = load_graph(out)
    assert h.target_labels == [f"L3/P{last}/F{fid}"] and h.target_tokens.tolist() == [-1] and h.n_sel == 5
    v = read_graph_json(out)
    target = next(n for n in v.nodes if n["feature_type"] == "logit")
    assert target["feature"] == h.meta["vocab_size"] and target["is_target_logit"]
    capsys.readouterr()


def test_clt_replacement(tiny_model_dir, tmp_path, capsys):
    from circuit_helpers import tiny_clt

    clt = tiny_clt(tiny_model_dir, tmp_path / "clt", n=16)
    base = ["attribute", str(clt), "--prompt", PROMPT, "--out", str(tmp_path / "g")]
    assert main([*base, "--target-feature", "2:-1:16"]) == 2
    assert "feature 16 is outside layer 2's 0..15" in capsys.readouterr().err
    assert main([*base, "--target", " b"]) == 0
    g = load_graph(tmp_path / "g")
    assert (
        g.meta["kind"] == "clt" and g.target_labels == [" b"] and set(g.active_features[:, 0].tolist()) <= {0, 1, 2, 3}
    )


def test_validate_prompts_writes_its_report_and_refuses_a_graph_folder(tmp_path, tiny_model_dir):
    """`--validate-prompts N` checks N corpus prompts' graphs against ablations into its own folder kind; it
    never writes into a graph folder, and --prompt with it is refused before anything loads."""
    from saelab.circuits.config import AttributeConfig
    from saelab.circuits.run import validate_graphs
    from saelab.errors import UserError

    rep = tiny_plt(tiny_model_dir, tmp_path / "rep")
    out = tmp_path / "val"
    assert main(["attribute", str(rep), "--validate-prompts", "2", "--validate-features", "3", "--out", str(out)]) == 0
    report = json.loads((out / "validation.json").read_text())
    assert report["format"] == "saelab-validation" and (out / "validation.png").exists()
    assert len(report["prompts"]) == 2 and 0 <= report["graph_scores"]["replacement_score"]["mean"] <= 1
    assert main(["attribute", str(rep), "--prompt", "a b c", "--out", str(tmp_path / "g")]) == 0
    before = sorted(p.name for p in (tmp_path / "g").iterdir())
    cfg = AttributeConfig(replacement=str(rep), validate_prompts=1, out=str(tmp_path / "g"), overwrite=True)
    with pytest.raises(UserError, match="not a graph validation"):
        validate_graphs(cfg)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == before
    assert main(["attribute", str(rep), "--validate-prompts", "1", "--prompt", "x", "--out", str(tmp_path / "z")]) != 0
    assert not (tmp_path / "z").exists()


def test_the_python_stage_writes_the_graph_the_command_writes(rep, tmp_path):
    """`saelab.attribute(AttributeConfig(...))` (the public API) and `saelab attribute` are one
    implementation: the same graph, node for node and edge for edge, and the Graph it returns is the one
    on disk."""
    import saelab

    assert main(["attribute", str(rep), "--prompt", PROMPT, "--out", str(tmp_path / "cli"), "--threads", "2"]) == 0
    cfg = saelab.AttributeConfig(replacement=str(rep), prompt=PROMPT, out=str(tmp_path / "api"), threads=2)
    g = saelab.attribute(cfg, progress=False)
    cli, disk = load_graph(tmp_path / "cli"), load_graph(tmp_path / "api")
    for x in (g, disk):
        assert x.token_strings == cli.token_strings and x.target_labels == cli.target_labels
        assert x.active_features.equal(cli.active_features) and x.selected_features.equal(cli.selected_features)
        assert x.adjacency.allclose(cli.adjacency, atol=1e-6)
    assert isinstance(g, saelab.Graph) and (tmp_path / "api" / "api.json").exists()
    with pytest.raises(UserError, match="validate_attribution"):
        saelab.attribute(saelab.AttributeConfig(replacement=str(rep), validate_prompts=1, out=str(tmp_path / "v")))
