"""circuits/prune.py: influence, pruning and the two scores on hand-computed graphs, and the same numbers as
circuit-tracer's own functions (run in its virtualenv) on random DAG adjacencies."""

from __future__ import annotations

import pytest
import torch
from random_graph import ct_graph_code, ct_inputs, random_graph, run_circuit_tracer

from saelab.circuits.graph import Graph
from saelab.circuits.neuronpedia import target_vocab_ids
from saelab.circuits.prune import (
    compute_influence,
    graph_scores,
    node_influence,
    normalize_matrix,
    partial_influences,
    prune_graph,
    target_weight_vector,
)
from saelab.errors import UserError


def small_graph(adj_rows: dict, n_sel: int, n_layers=1, n_pos=1, weights=(1.0,)) -> Graph:
    n = n_sel + n_layers * n_pos + n_pos + len(weights)
    adj = torch.zeros(n, n)
    for (t, s), w in adj_rows.items():
        adj[t, s] = w
    return Graph(
        prompt="x",
        tokens=torch.arange(5, 5 + n_pos),
        token_strings=["x"] * n_pos,
        n_layers=n_layers,
        active_features=torch.tensor([[0, 0, i] for i in range(n_sel)]).reshape(-1, 3),
        activation_values=torch.ones(n_sel),
        selected_features=torch.arange(n_sel),
        adjacency=adj,
        target_tokens=torch.arange(len(weights)),
        target_labels=["y"] * len(weights),
        target_weights=torch.tensor(weights),
    )


def test_normalize_and_chain_influence():
    a = torch.zeros(4, 4)
    a[1, 0], a[2, 1], a[3, 2] = 2.0, 3.0, 0.5  # 0 -> 1 -> 2 -> 3
    w = torch.tensor([0.0, 0.0, 0.0, 1.0])
    # w A = [0, 0, .5, 0]; w A^2 = [0, 1.5, 0, 0]; w A^3 = [3, 0, 0, 0]; w A^4 = 0
    assert torch.allclose(compute_influence(a, w), torch.tensor([3.0, 1.5, 0.5, 0.0]))
    n = normalize_matrix(a)
    assert torch.equal(n, (a != 0).float())  # one input per row: each normalised to 1
    assert torch.allclose(compute_influence(n, w), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    m = torch.tensor([[0.0, 0.0], [-3.0, 1.0]])
    assert torch.allclose(normalize_matrix(m), torch.tensor([[0.0, 0.0], [0.75, 0.25]]))


def test_cycle_is_a_clear_error():
    a = torch.zeros(3, 3)
    a[0, 1], a[1, 0], a[2, 0] = 1.0, 1.0, 1.0
    with pytest.raises(UserError, match="cycle"):
        compute_influence(a, torch.tensor([0.0, 0.0, 1.0]), max_iter=50)


def test_scores_hand_computed():
    # nodes: f0, err(0,0), tok0, target. f0 <- tok 2; target <- f0 3, err 1, tok -1
    g = small_graph({(0, 2): 2.0, (3, 0): 3.0, (3, 1): 1.0, (3, 2): -1.0}, n_sel=1)
    infl = node_influence(g.adjacency, target_weight_vector(g))
    assert torch.allclose(infl, torch.tensor([0.6, 0.2, 0.8, 0.0]))  # tok: 0.2 direct + 0.6 through f0
    rep, comp = graph_scores(g)
    assert rep == pytest.approx(0.8 / (0.8 + 0.2))
    # non-error fractions [1, 1, 1, 0.8] weighted by influence + weights [0.6, 0.2, 0.8, 1]
    assert comp == pytest.approx((0.6 + 0.2 + 0.8 + 0.8) / 2.6)


def test_prune_hand_computed():
    # nodes: f0, f1, err, tok, target; target <- f0 8, f1 1, err 1; f0 <- tok; f1 <- tok
    g = small_graph({(4, 0): 8.0, (4, 1): 1.0, (4, 2): 1.0, (0, 3): 1.0, (1, 3): 1.0}, n_sel=2)
    # influence: f0 .8, f1 .1, err .1, tok .9: the top two (tok, f0) cover 1.7 / 1.9 > 0.8
    r = prune_graph(g, 0.8, 0.98)
    assert r.node_mask.tolist() == [True, False, False, True, True]
    kept = {tuple(x) for x in r.edge_mask.nonzero().tolist()}
    assert kept == {(4, 0), (0, 3)}
    assert r.cumulative_scores[3] == pytest.approx(0.9 / 1.9) and r.cumulative_scores[0] == pytest.approx(1.7 / 1.9)
    assert r.cumulative_scores[4] == pytest.approx(1.0)
    every = prune_graph(g, 1.0, 1.0)  # everything with influence stays
    assert every.node_mask.all()
    with pytest.raises(UserError, match="--node-threshold must be between 0 and 1"):
        prune_graph(g, 1.5)


def test_prune_drops_features_without_inputs():
    # f1 -> target strongly but f1 has no input at all: kept by influence, dropped for want of an incoming edge
    g = small_graph({(4, 0): 1.0, (4, 1): 5.0, (0, 3): 1.0}, n_sel=2)
    r = prune_graph(g, 0.99, 0.99)
    assert not r.node_mask[1] and r.node_mask[0]
    assert not r.edge_mask[:, 1].any()


def test_partial_influences_with_every_row_equals_node_influence():
    g = random_graph(n_active=10, n_targets=3, seed=3)
    rows_idx = torch.cat([torch.arange(g.target_start, g.n_nodes), torch.randperm(g.n_sel)])
    got = partial_influences(g.adjacency[rows_idx], g.target_weights, rows_idx)
    want = node_influence(g.adjacency, target_weight_vector(g))
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("seed,n_sel", [(0, None), (1, 9), (2, None)])
def test_same_numbers_as_circuit_tracer(tmp_path, seed, n_sel):
    g = random_graph(n_layers=3, n_pos=5, n_active=14, n_sel=n_sel, n_targets=3, seed=seed)
    n_part = 5  # partial influences from the target rows and the first 5 features' rows
    rows_idx = torch.cat([torch.arange(g.target_start, g.n_nodes), torch.arange(n_part)]).int()
    rows = g.adjacency[rows_idx.long()]
    script = (
        ct_graph_code(g.n_layers)
        + """
from circuit_tracer.graph import prune_graph, compute_graph_scores, compute_partial_influences
nm, em, cs = prune_graph(G, 0.8, 0.98)
rep, comp = compute_graph_scores(G)
part = compute_partial_influences(IN['rows'], IN['target_weights'], IN['rows_idx'], device='cpu')
json.dump({'node_mask': nm.tolist(), 'edge_mask': em.nonzero().tolist(), 'cum': cs.tolist(), 'rep': rep,
           'comp': comp, 'partial': part.tolist()}, open(OUT, 'w'))
"""
    )
    ct = run_circuit_tracer(script, tmp_path, rows=rows, rows_idx=rows_idx, **ct_inputs(g, target_vocab_ids(g)))
    r = prune_graph(g, 0.8, 0.98)
    assert r.node_mask.tolist() == ct["node_mask"]
    assert r.edge_mask.nonzero().tolist() == ct["edge_mask"]
    assert torch.allclose(r.cumulative_scores, torch.tensor(ct["cum"]), atol=1e-6, rtol=0)
    rep, comp = graph_scores(g)
    assert rep == pytest.approx(ct["rep"], abs=1e-6) and comp == pytest.approx(ct["comp"], abs=1e-6)
    part = partial_influences(rows, g.target_weights, rows_idx)
    assert torch.allclose(part, torch.tensor(ct["partial"]), atol=1e-6, rtol=0)
    assert 0 < r.node_mask[: g.n_sel].sum() < g.n_sel  # the case prunes some features, keeps some
