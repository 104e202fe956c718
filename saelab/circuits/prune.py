"""Influence on the targets, pruning, and the graph's scores: circuit-tracer's definitions (its graph.py),
the same operations in the same order so the numbers agree to float rounding.

Influence: normalise each row of |adjacency| to sum 1 (a node's inputs as fractions), then the total
influence of every node on the weighted targets is w A + w A^2 + ... (w: the target weights). A graph's
adjacency is nilpotent (edges go from earlier layers / positions to later ones), so the series ends after
at most depth steps with an exact zero; a cycle never ends it, which is a damaged graph, not a long one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import UserError
from .graph import Graph

MAX_ITER = 1000  # far beyond any model's depth: a series still running is a cycle


def normalize_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """|matrix| with each row summing to 1 (a row of zeros stays zero)."""
    normalized = matrix.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(a: torch.Tensor, weights: torch.Tensor, max_iter: int = MAX_ITER) -> torch.Tensor:
    """weights @ (A + A^2 + ...), the series summed until a term is exactly zero. [n] -> [n]."""
    current = weights @ a
    influence = current
    iterations = 0
    while current.any():
        if iterations >= max_iter:
            raise UserError(
                f"the graph's influence did not vanish after {max_iter} steps: its adjacency has a cycle, "
                f"so it is not an attribution graph (edges must go from earlier nodes to later ones)"
            )
        current = current @ a
        influence += current
        iterations += 1
    return influence


def target_weight_vector(graph: Graph) -> torch.Tensor:
    """[n_nodes] the target weights on the target nodes (the last n_targets), zero elsewhere."""
    w = torch.zeros(graph.adjacency.shape[0], device=graph.adjacency.device)
    w[-graph.n_targets :] = graph.target_weights.to(w)
    return w


def node_influence(adjacency: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n_nodes] each node's total influence on the weighted targets (weights: [n_nodes])."""
    return compute_influence(normalize_matrix(adjacency), weights)


def edge_influence(pruned: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n_nodes, n_nodes] each edge's share of the influence: normalised weight x influence of its target."""
    normalized = normalize_matrix(pruned)
    influence = compute_influence(normalized, weights)
    influence += weights
    return normalized * influence[:, None]


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score at which the largest scores, kept, cover `threshold` of the total."""
    sorted_scores = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
    index = min(int(torch.searchsorted(cumulative, threshold).item()), len(cumulative) - 1)
    return sorted_scores[index]


class PruneResult(NamedTuple):
    node_mask: torch.Tensor  # [n_nodes] bool: nodes kept
    edge_mask: torch.Tensor  # [n_nodes, n_nodes] bool: edges kept ([target, source])
    cumulative_scores: torch.Tensor  # [n_nodes] the share of influence of the nodes at least as influential


def check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    for name, v in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise UserError(f"{name} must be between 0 and 1 (a fraction of the influence), not {v}")


def prune_graph(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Keep the nodes covering `node_threshold` of the influence on the targets (tokens and targets always),
    then the edges among them covering `edge_threshold`; then drop feature and error nodes left without an
    outgoing edge and feature nodes without an incoming one, until nothing changes."""
    check_thresholds(node_threshold, edge_threshold)
    n_tokens, n_targets, n_features = graph.n_pos, graph.n_targets, graph.n_sel
    adjacency = graph.adjacency
    weights = target_weight_vector(graph)

    influence = node_influence(adjacency, weights)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[-n_targets - n_tokens :] = True

    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    edge_scores = edge_influence(pruned, weights)
    edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)

    old_mask = node_mask.clone()
    node_mask[: -n_targets - n_tokens] &= edge_mask[:, : -n_targets - n_tokens].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not torch.all(node_mask == old_mask):  # each removal may strand more nodes: at most depth + 1 rounds
        old_mask[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: -n_targets - n_tokens] &= edge_mask[:, : -n_targets - n_tokens].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)

    sorted_scores, order = torch.sort(influence, descending=True)
    cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
    scores = torch.zeros_like(influence)
    scores[order] = cumulative
    return PruneResult(node_mask, edge_mask, scores)


def graph_scores(graph: Graph) -> tuple[float, float]:
    """(replacement score, completeness score).

    Replacement: of the influence the tokens and errors have on the targets, the tokens' share (1: the tokens
    reach the targets through features alone). Completeness: each node's share of input from features and
    tokens rather than errors, averaged with weights = its influence on the targets (+ the target weights)."""
    error_start = graph.error_start
    error_end = graph.token_start
    token_end = graph.target_start
    weights = target_weight_vector(graph)

    normalized = normalize_matrix(graph.adjacency)
    influence = compute_influence(normalized, weights)
    token_influence = influence[error_end:token_end].sum()
    error_influence = influence[error_start:error_end].sum()
    replacement = token_influence / (token_influence + error_influence)

    non_error = 1 - normalized[:, error_start:error_end].sum(dim=-1)
    output_influence = influence + weights
    completeness = (non_error * output_influence).sum() / output_influence.sum()
    return replacement.item(), completeness.item()


def partial_influences(
    rows: torch.Tensor, target_weights: torch.Tensor, row_to_node: torch.Tensor, max_iter: int = 128
) -> torch.Tensor:
    """Influence of every node on the targets from only the rows computed so far (circuit-tracer's
    compute_partial_influences): which features to compute next, most influential first.

    rows [n_rows, n_cols]: the computed rows of the adjacency, columns in node order with the targets last;
    target_weights [n_targets]; row_to_node [n_rows]: the node (column index) each row belongs to. -> [n_cols]."""
    rows = rows.detach()
    scale = 1.0 / rows.abs().sum(dim=1).clamp(min=1e-8)  # row sums, one block of |rows| at a time
    influences = torch.zeros(rows.shape[1], device=rows.device, dtype=rows.dtype)
    prod = torch.zeros(rows.shape[1], device=rows.device, dtype=rows.dtype)
    prod[-len(target_weights) :] = target_weights.to(prod)
    index = row_to_node.to(rows.device).long()
    for _ in range(max_iter):
        prod = _normalized_product(prod[index] * scale, rows)
        if not prod.any():
            return influences
        influences += prod
    raise RuntimeError(f"the partial influences did not vanish after {max_iter} steps: the computed rows form a cycle")


def _normalized_product(weights: torch.Tensor, rows: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """weights @ |rows| without an [n_rows, n_cols] copy: |rows| is formed one block of rows at a time (the
    rows of a 64-token graph are 1 GB)."""
    out = torch.zeros(rows.shape[1], device=rows.device, dtype=rows.dtype)
    for start in range(0, rows.shape[0], block):
        w = weights[start : start + block]
        if w.any():
            out += w @ rows[start : start + block].abs()
    return out
