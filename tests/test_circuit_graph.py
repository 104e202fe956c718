"""circuits/graph.py: the Graph's node indexing (circuit-tracer's order), and its folder: save -> load gives
the same tensors; a file or folder that is not a graph, or a damaged one, is a clear UserError."""

from __future__ import annotations

import json

import pytest
import torch
from random_graph import random_graph

from saelab.circuits.graph import META, TENSORS, load_graph, save_graph
from saelab.errors import UserError
from saelab.storage import write_tensors


def test_node_indexing_follows_circuit_tracer_order():
    g = random_graph(n_layers=3, n_pos=4, n_active=12, n_sel=7, n_targets=2)
    assert (g.n_sel, g.n_pos, g.n_targets) == (7, 4, 2)
    assert g.n_nodes == 7 + 3 * 4 + 4 + 2 == g.adjacency.shape[0]
    assert g.error_index(0, 0) == 7 and g.error_index(1, 2) == 7 + 4 + 2 and g.error_index(2, 3) == 7 + 11
    assert g.token_index(0) == 19 and g.token_index(3) == 22
    assert g.target_index(0) == 23 and g.target_index(1) == 24
    kinds = g.node_kinds()
    assert kinds == [g.node_kind(i) for i in range(g.n_nodes)]
    assert kinds.count("feature") == 7 and kinds.count("error") == 12 and kinds[-2:] == ["target"] * 2
    assert g.error_of(g.error_index(1, 2)) == (1, 2)
    layer, pos, fid = g.feature(3)
    assert [layer, pos, fid] == g.active_features[g.selected_features[3]].tolist()
    assert torch.equal(g.feature_activations(), g.activation_values[g.selected_features])
    for bad in (lambda: g.error_index(3, 0), lambda: g.token_index(4), lambda: g.target_index(2), lambda: g.feature(7)):
        with pytest.raises(IndexError):
            bad()


def test_save_load_round_trip(tmp_path):
    g = random_graph(custom_targets=1)
    g.meta["scores"] = {"replacement": 0.5}
    out = save_graph(g, tmp_path / "g")
    assert {p.name for p in out.iterdir()} == {META, TENSORS}
    for where in (out, out / META, out / TENSORS):
        h = load_graph(where)
        for k in ("tokens", "active_features", "activation_values", "selected_features", "adjacency"):
            assert torch.equal(getattr(h, k), getattr(g, k)), k
        assert torch.equal(h.target_tokens, g.target_tokens) and torch.equal(h.target_weights, g.target_weights)
        assert (h.prompt, h.token_strings, h.target_labels, h.n_layers) == (
            g.prompt,
            g.token_strings,
            g.target_labels,
            g.n_layers,
        )
        assert h.meta == g.meta


def test_refuses_what_is_not_a_graph(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_graph(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no graph.json"):
        load_graph(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="is not a saelab graph"):
        load_graph(tmp_path / "notes.txt")
    other = tmp_path / "other"
    other.mkdir()
    (other / META).write_text(json.dumps({"format": "saelab.replacement"}))
    with pytest.raises(UserError, match="is not a saelab graph"):
        load_graph(other)
    (other / META).write_text("{ truncated")
    with pytest.raises(UserError, match="not valid JSON"):
        load_graph(other)


def test_refuses_damaged_graph(tmp_path):
    g = random_graph()
    out = save_graph(g, tmp_path / "g")
    (out / TENSORS).write_bytes((out / TENSORS).read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_graph(out)
    save_graph(g, out)
    write_tensors(out / TENSORS, {"adjacency": g.adjacency})
    with pytest.raises(UserError, match="lacks the tensors"):
        load_graph(out)
    save_graph(g, out)
    head = json.loads((out / META).read_text())
    head["token_strings"] = head["token_strings"][:-1]
    (out / META).write_text(json.dumps(head))
    with pytest.raises(UserError, match="token strings for"):
        load_graph(out)
    head["token_strings"], head["version"] = g.token_strings, 99
    (out / META).write_text(json.dumps(head))
    with pytest.raises(UserError, match="version 99"):
        load_graph(out)
    (out / META).unlink()
    (out / TENSORS).unlink()
    save_graph(g, out)
    (out / TENSORS).unlink()
    with pytest.raises(UserError, match="incomplete"):
        load_graph(out)


def test_save_refuses_inconsistent_graph(tmp_path):
    g = random_graph()
    g.adjacency = g.adjacency[:-1, :-1]
    with pytest.raises(UserError, match="adjacency has shape"):
        save_graph(g, tmp_path / "g")
    assert not (tmp_path / "g").exists()
