"""circuits/neuronpedia.py: the pruned graph as circuit-tracer / Neuronpedia graph JSON. Write -> read gives
the same nodes and links; for the same graph, circuit-tracer's own create_graph_files writes the same nodes,
links and metadata (run in its virtualenv); a file that is not such a graph is a clear UserError."""

from __future__ import annotations

import json

import pytest
import torch
from random_graph import TOKENIZER, ct_graph_code, ct_inputs, ct_tokenizer, random_graph, run_circuit_tracer

from saelab.circuits.graph import save_graph
from saelab.circuits.neuronpedia import (
    FEATURE,
    INDEX,
    cantor_pairing,
    graph_json,
    read_graph_json,
    slugify,
    target_vocab_ids,
    write_graph_json,
)
from saelab.circuits.prune import prune_graph
from saelab.errors import UserError

OURS = ("feature_layer", "feature_id")


def test_write_read_round_trip(tmp_path):
    g = random_graph(n_layers=3, n_pos=5, n_active=14, custom_targets=1, seed=4)
    r = prune_graph(g)
    path = write_graph_json(g, r, tmp_path, "my-graph", "test-scan", extra_metadata={"replacement_score": 0.5})
    assert path == tmp_path / "my-graph.json"
    doc = json.loads(path.read_text())
    v = read_graph_json(path)
    assert v.nodes == doc["nodes"] and v.links == doc["links"]
    assert v.metadata["saelab"] == {"replacement_score": 0.5} and v.qParams["linkType"] == "both"
    assert read_graph_json(tmp_path).nodes == v.nodes  # a folder: the graph its graph-metadata.json lists
    assert json.loads((tmp_path / INDEX).read_text())["graphs"][0]["slug"] == "my-graph"
    # the kept nodes: every token and target, and the features / errors that some kept edge touches
    kinds = [n["feature_type"] for n in v.nodes]
    assert kinds.count("embedding") == g.n_pos and kinds.count("logit") == g.n_targets
    ids = {n["node_id"] for n in v.nodes}
    assert len(ids) == len(v.nodes)
    n_links = int(sum(r.edge_mask[d, s] and r.node_mask[d] and r.node_mask[s] for d, s in r.edge_mask.nonzero()))
    assert len(v.links) == n_links > 0
    # each feature node names its (layer, feature id, position), its activation and the edges' weights
    for n in v.nodes:
        if n["feature_type"] == FEATURE:
            layer, fid = v.feature_of(n)
            assert n["feature"] == cantor_pairing(layer, fid) and n["node_id"].startswith(f"{layer}_{fid}_")
            row = ((g.active_features == g.active_features.new_tensor([layer, n["ctx_idx"], fid])).all(1)).nonzero()
            assert n["activation"] == pytest.approx(float(g.activation_values[row[0, 0]]))
    custom = [n for n in v.nodes if n["feature_type"] == "logit" and n["feature"] >= g.meta["vocab_size"]]
    assert len(custom) == 1 and custom[0]["is_target_logit"]  # target 0 is the custom one: vocab_size + 0
    first = v.links[0]
    assert isinstance(first["weight"], float) and first["source"] in ids


def test_slug_never_a_file_of_ours():
    assert slugify("My Graph: 2+2") == "my-graph-2-2"
    assert slugify("graph") == "saelab-graph" and slugify("graph-metadata") == "saelab-graph-metadata"
    assert slugify("///") == "graph" or slugify("///") == "saelab-graph"


def test_reader_refuses_what_is_not_a_graph_json(tmp_path):
    g = random_graph()
    doc = graph_json(g, prune_graph(g), "s", "scan")

    def refused(d, match, name="x.json"):
        p = tmp_path / name
        p.write_text(d if isinstance(d, str) else json.dumps(d))
        with pytest.raises(UserError, match=match):
            read_graph_json(p)

    refused("[1, 2]", "no JSON object")
    refused("{ trunc", "not valid JSON")
    refused({"nodes": []}, "no 'metadata' object")
    refused(doc | {"links": [{"source": "nope", "target": doc["nodes"][0]["node_id"], "weight": 1}]}, "nope")
    refused(doc | {"nodes": doc["nodes"] + doc["nodes"][:1]}, "appears twice")
    refused(doc | {"nodes": [{k: v for k, v in doc["nodes"][0].items() if k != "ctx_idx"}]}, "ctx_idx")
    refused(doc | {"links": [doc["links"][0] | {"weight": "big"}]}, "numeric weight")
    save_graph(g, tmp_path / "g")
    with pytest.raises(UserError, match="saelab's graph.json"):
        read_graph_json(tmp_path / "g" / "graph.json")
    with pytest.raises(UserError, match="expected one graph JSON"):
        read_graph_json(tmp_path / "g")


def test_same_json_as_circuit_tracer(tmp_path):
    from transformers import AutoTokenizer

    g = random_graph(n_layers=3, n_pos=5, n_active=14, n_sel=11, n_targets=3, seed=7, custom_targets=1)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    g.token_strings = [tok.decode(t) for t in g.tokens]
    script = (
        ct_graph_code(g.n_layers, ct_tokenizer(tmp_path))
        + f"""
from circuit_tracer.utils.create_graph_files import create_graph_files
create_graph_files(G, 'ct-graph', {str(tmp_path / "ct")!r}, node_threshold=0.8, edge_threshold=0.98)
json.dump({{}}, open(OUT, 'w'))
"""
    )
    run_circuit_tracer(script, tmp_path, **ct_inputs(g, target_vocab_ids(g)))
    theirs = read_graph_json(tmp_path / "ct" / "ct-graph.json")  # our reader reads their file
    ours = json.loads(write_graph_json(g, prune_graph(g), tmp_path / "ours", "ct-graph", "test-scan").read_text())
    assert [{k: v for k, v in n.items() if k not in OURS} for n in ours["nodes"]] == theirs.nodes
    assert ours["links"] == theirs.links
    assert ours["metadata"] == theirs.metadata and ours["qParams"] == theirs.qParams
    feats = [n for n in theirs.nodes if n["feature_type"] == FEATURE]
    assert feats and all(
        theirs.feature_of(n) == (n2["feature_layer"], n2["feature_id"])
        for n, n2 in zip(feats, [n for n in ours["nodes"] if n["feature_type"] == FEATURE])
    )
    listed = json.loads((tmp_path / "ct" / INDEX).read_text())
    assert json.loads((tmp_path / "ours" / INDEX).read_text()) == listed


def test_feature_error_id_collision(tmp_path):
    """circuit-tracer names the error of layer L at P and the feature (layer 0, id L) at P both `0_L_P`."""
    from saelab.circuits.prune import PruneResult

    g = random_graph(n_layers=3, n_pos=5, n_active=14, seed=2)
    g.active_features[g.selected_features[0]] = g.active_features.new_tensor([0, 2, 1])  # -> "0_1_2"
    everything = PruneResult(torch.ones(g.n_nodes, dtype=torch.bool), g.adjacency != 0, torch.zeros(g.n_nodes))
    doc = graph_json(g, everything, "s", "scan")
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids)) and "0_1_2" in ids and "0_1_2_error" in ids
    error = next(n for n in doc["nodes"] if n["node_id"] == "0_1_2_error")
    assert error["feature_type"] == "mlp reconstruction error" and (error["layer"], error["ctx_idx"]) == ("1", 2)
    assert any(link["source"] == "0_1_2_error" for link in doc["links"])
    p = tmp_path / "ours.json"
    p.write_text(json.dumps(doc))
    assert read_graph_json(p).nodes == doc["nodes"]
    # circuit-tracer's file has the duplicate: the reader renames its error node the same way
    for n in doc["nodes"]:
        n["node_id"] = n["node_id"].removesuffix("_error")
    doc["links"] = [link for link in doc["links"] if "_error" not in link["source"] + link["target"]]
    p.write_text(json.dumps(doc))
    v = read_graph_json(p)
    assert sorted(n["node_id"] for n in v.nodes) == sorted(ids)
    assert v.by_id["0_1_2"]["feature_type"] == FEATURE
