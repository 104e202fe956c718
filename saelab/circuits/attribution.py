"""`attribute`: the attribution graph of a prompt in the local replacement model (Ameisen et al. 2025).

Nodes: the active features of every layer (activation, position), one error node per (layer, position)
(what the dictionaries miss of that MLP output), one token node per position (the residual stream entering
block 0), and the targets (the top next-token logits, or a logit difference, or one feature). An edge is the
direct effect of a source on a target's input with attention patterns and norm denominators frozen at the
prompt's clean run and every MLP replaced by its dictionary plus its error (circuits/frozen.py): the model is
then affine in the sources, and one backward pass from a target's input reads all its incoming edges.

Cost. Rows are computed by batched backward passes (`is_grads_batched`: one forward, a vmapped backward per
batch of rows). A row of a node at position p only needs a forward over p + 1 tokens, and a batch is sorted by
layer so its backward starts at the highest layer in it; both keep the work near half of a full-length pass.
Memory is the edge rows [rows, features + errors + tokens] plus one batch of gradients [batch, p + 1, d] per
layer; no [positions x vocab x features] tensor is ever formed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..sae.replacement import Replacement
from .coders import LayerFeatures, ReplacementCoders
from .config import MAX_FEATURE_NODES
from .frozen import Recording, frozen_forward, record
from .graph import Graph
from .prune import partial_influences
from .targets import AttributionTarget, Row, target_label, target_rows

ROUND_BATCHES = 8  # with max_feature_nodes: feature rows per re-ranking = 8 batches (circuit-tracer: 4 x 512)
TILE_LAYERS, TILE_POSITIONS = 8, 4
GRAD_POSITIONS = 8192  # rows x positions in one batched backward: 8192 x 576 floats = 19 MB per layer


class _Sources:
    """Every source node of the prompt and its column: active features (layer, position, id order), error
    nodes (layer-major), token nodes."""

    def __init__(self, rec: Recording, coders: ReplacementCoders, zero_positions: int):
        self.n_layers, self.n_pos = len(rec.mlp_in), rec.n_pos
        self.feats: dict[int, LayerFeatures] = {}
        parts, offset = [], 0
        self.offsets: dict[int, int] = {}
        for layer in coders.layers:
            f = coders.encode(layer, rec.mlp_in[layer], first_position=zero_positions)
            self.feats[layer], self.offsets[layer] = f, offset
            offset += len(f.ids)
            parts.append(torch.stack([torch.full_like(f.ids, layer), f.positions, f.ids], 1))
        dev = rec.resid0.device  # everything per prompt lives on the model's device; edge rows on the host
        self.active = torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long, device=dev)
        self.values = torch.cat([self.feats[l].values for l in coders.layers]) if parts else torch.zeros(0, device=dev)
        self.n_active = offset
        self.error_offset = offset
        self.token_offset = offset + self.n_layers * self.n_pos
        self.n_cols = self.token_offset + self.n_pos
        # what each MLP output is made of: features' writes + error + the rest (output bias, zeroed positions)
        self.errors, self.rest, self.leaf = {}, {}, {}
        for layer in range(self.n_layers):
            with torch.no_grad():
                skip = coders.skip(layer, rec.mlp_in[layer])
                recon = coders.reconstruction(layer, self.feats, self.n_pos)
            leaf = rec.mlp_out[layer] - skip
            err = leaf - recon
            err[:zero_positions] = 0
            self.leaf[layer], self.errors[layer] = leaf, err
            writes = recon - coders.output_bias(layer)  # the features' own writes (no dictionary: 0)
            self.rest[layer] = leaf - err - writes
        self.writes = _padded_writes(coders, self.feats, self.n_pos)


def _padded_writes(coders: ReplacementCoders, feats: dict[int, LayerFeatures], n_pos: int) -> dict:
    """source layer -> (slots [P, kmax] column-in-layer or -1, {target layer: [P, kmax, d] activation x decoder})."""
    out = {}
    for src, f in feats.items():
        if len(f.ids) == 0:
            continue
        counts = torch.bincount(f.positions, minlength=n_pos)
        kmax = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        dev = f.ids.device
        slot = torch.arange(len(f.ids), device=dev) - starts[f.positions]
        slots = torch.full((n_pos, kmax), -1, dtype=torch.long, device=dev)
        slots[f.positions, slot] = torch.arange(len(f.ids), device=dev)
        per_target = {}
        for tgt in coders.write_layers(src):
            w = coders.write_vectors(src, f.ids, tgt) * f.values[:, None]
            pad = torch.zeros(n_pos, kmax, w.shape[1], device=dev)
            pad[f.positions, slot] = w
            per_target[tgt] = pad
        out[src] = (slots, per_target)
    return out


def _site_input(run, row: Row, n_layers: int) -> torch.Tensor:
    """What a row's target reads, from a Recording ([P, d] tensors) or a FrozenRun ([1, n, d])."""
    t = run.final if row.site == n_layers else run.mlp_in[row.site]
    return t[row.position] if isinstance(run, Recording) else t[0, row.position]


def _tile(row: Row) -> tuple[int, int, int, int]:
    """Sort key of a row: tiles of TILE_LAYERS layers x TILE_POSITIONS positions, highest first, then layer and
    position descending. A batch's backward starts at its highest layer and its forward covers the positions
    up to its furthest row, so rows batched together should be close in both."""
    return (-(row.site // TILE_LAYERS), -(row.position // TILE_POSITIONS), -row.site, -row.position)


class _RowComputer:
    """Computes edge rows (all sources) for targets in batches of rows close in layer and position (`_tile`);
    a batch grows while rows x positions stays under GRAD_POSITIONS."""

    def __init__(self, model, rec: Recording, coders: ReplacementCoders, src: _Sources, batch_size: int):
        self.model, self.rec, self.coders, self.src, self.batch_size = model, rec, coders, src, batch_size
        self.residuals: list[float] = []  # exactness: |input - (edges + constant)| / scale, per row

    def __call__(self, rows: list[Row], progress: Callable[[int], None]) -> torch.Tensor:
        out = torch.zeros(len(rows), self.src.n_cols)
        order = sorted(range(len(rows)), key=lambda i: _tile(rows[i]))
        start = 0
        while start < len(order):
            end, n = start, 0
            while end < len(order) and end - start < self.batch_size:
                grown = max(n, rows[order[end]].position + 1)
                if end > start and (end - start + 1) * grown > GRAD_POSITIONS:
                    break
                n, end = grown, end + 1
            chunk = order[start:end]
            out[chunk] = self._prefix_batch(n, [rows[i] for i in chunk]).cpu()
            progress(len(chunk))
            start = end
        return out

    def _prefix_batch(self, n: int, rows: list[Row]) -> torch.Tensor:
        """The rows of targets at positions < n, from one frozen forward over the first n tokens."""
        src, L = self.src, self.src.n_layers
        resid0 = self.rec.resid0[:n][None].clone().requires_grad_(True)
        leaves = {l: src.leaf[l][:n][None].clone().requires_grad_(True) for l in range(L)}
        run = frozen_forward(self.model, self.rec, self.coders, n, resid0, leaves)
        with torch.no_grad():  # the part of each input no source explains: model biases (a zero-leaf forward)
            zeros = {l: torch.zeros_like(v) for l, v in leaves.items()}
            zero = frozen_forward(self.model, self.rec, self.coders, n, torch.zeros_like(resid0), zeros)
        return self._batch(run, zero, rows, n)

    def _batch(self, run, zero, rows: list[Row], n: int) -> torch.Tensor:
        src, L, B = self.src, self.src.n_layers, len(rows)
        sites = sorted({r.site for r in rows})
        outputs, grads = [], []
        for s in sites:
            t = run.final if s == L else run.mlp_in[s]
            g = torch.zeros(B, *t.shape, device=t.device)
            for b, r in enumerate(rows):
                if r.site == s:
                    g[b, 0, r.position] = r.vector
            outputs.append(t)
            grads.append(g)
        top = max(sites)
        layers = list(range(min(top, L)))  # MLP outputs below the highest site can reach it
        inputs = [run.resid0] + [run.mlp_out[l] for l in layers]
        got = torch.autograd.grad(outputs, inputs, grads, allow_unused=True, is_grads_batched=True)
        dev = run.resid0.device
        G0 = got[0][:, 0] if got[0] is not None else torch.zeros(B, n, src.leaf[0].shape[1], device=dev)
        G = {l: (g[:, 0] if g is not None else None) for l, g in zip(layers, got[1:])}
        row = torch.zeros(B, src.n_cols, device=dev)
        row[:, src.token_offset : src.token_offset + n] = (G0 * self.rec.resid0[:n]).sum(-1)
        rest = torch.zeros(B, device=dev)
        for l, g in G.items():
            if g is None:
                continue
            e0 = src.error_offset + l * src.n_pos
            row[:, e0 : e0 + n] = (g * src.errors[l][:n]).sum(-1)
            rest += (g * src.rest[l][:n]).sum((-1, -2)) if torch.is_tensor(src.rest[l]) else 0.0
        self._feature_edges(row, G, n)
        self._check(rows, row, rest, run, zero, L)
        return row

    def _feature_edges(self, row: torch.Tensor, G: dict, n: int) -> None:
        src = self.src
        for s, (slots, per_target) in src.writes.items():
            acc = None
            for t, pad in per_target.items():
                g = G.get(t)
                if g is None:
                    continue
                part = torch.bmm(g.transpose(0, 1), pad[:n].transpose(1, 2))  # [n, B, kmax]
                acc = part if acc is None else acc + part
            if acc is None:
                continue
            sl = slots[:n]
            keep = sl >= 0
            cols = src.offsets[s] + sl[keep]  # [m]
            row[:, cols] = acc.permute(1, 0, 2)[:, keep]

    def _check(self, rows, row, rest, run, zero, L) -> None:
        """Exactness: each row's input = its edges + the bias / zeroed-position part + the zero-leaf constant."""
        with torch.no_grad():
            for b, r in enumerate(rows):
                actual = float(_site_input(self.rec, r, L) @ r.vector)  # the CLEAN run's input
                const = float(_site_input(zero, r, L) @ r.vector)
                total = float(row[b].sum()) + float(rest[b]) + const
                scale = float(row[b].abs().sum()) + abs(float(rest[b])) + abs(const) + 1e-12
                self.residuals.append(abs(actual - total) / scale)


def attribute(
    model,
    replacement: Replacement,
    tokens: torch.Tensor,
    targets: list[AttributionTarget] | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = MAX_FEATURE_NODES,
    batch_size: int = 256,
    zero_positions: int = 1,
    progress: bool | Callable[[int, int], None] = True,
    tokenizer=None,
) -> Graph:
    """The attribution graph of `tokens` [P] (one prompt) in `replacement`'s local replacement model.
    `tokenizer` (optional) names the tokens and the logit targets. `max_feature_nodes`: None = every active
    feature. `progress`: a tqdm bar (True), none (False), or a callable(rows done, rows in all) -- the web
    app's job reports and cancels through it (an exception raised there stops the computation)."""
    t0 = time.time()
    tokens = torch.as_tensor(tokens, dtype=torch.long).view(-1)
    if len(tokens) < 1:
        raise UserError("the prompt has no tokens")
    coders = ReplacementCoders(replacement)
    rec = record(model, tokens)
    src = _Sources(rec, coders, zero_positions)
    t_rows, t_tokens, t_specs, t_weights = target_rows(model, rec, coders, targets, max_n_logits, desired_logit_prob)
    compute = _RowComputer(model, rec, coders, src, batch_size)
    n_sel = src.n_active if max_feature_nodes is None else min(max_feature_nodes, src.n_active)
    total = len(t_rows) + n_sel
    bar = tqdm(total=total, desc="attribution rows", unit="row", disable=progress is not True)
    done = [0]

    def step(n: int) -> None:
        bar.update(n)
        done[0] += n
        if callable(progress):
            progress(done[0], total)

    target_edges = compute(t_rows, step)
    feature_rows, order = _feature_rows(compute, src, coders, target_edges, t_weights, n_sel, batch_size, step)
    bar.close()
    selected = torch.sort(order).values
    graph = _assemble(src, selected, feature_rows, order, target_edges, rec, t_tokens, t_specs, t_weights)
    name = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
    graph.token_strings = [name(t) for t in tokens.tolist()]
    graph.prompt = "".join(graph.token_strings) if tokenizer is not None else ""
    graph.target_labels = [target_label(t, name) for t in t_specs]
    graph.meta.update(
        kind=replacement.kind,
        replacement=str(replacement.path),
        model=replacement.model_spec,
        family=replacement.family,
        zero_positions=zero_positions,
        n_active_features=src.n_active,
        exactness=max(compute.residuals) if compute.residuals else 0.0,
        seconds=time.time() - t0,
    )
    return graph


def _feature_rows(compute, src, coders, target_edges, weights, n_sel, batch_size, progress):
    """Rows of the features in the graph: all of them, or (with max_feature_nodes) the most influential,
    chosen in rounds by their influence through the rows computed so far (circuit-tracer's rule)."""

    def row_of(i: int) -> Row:
        layer, pos, fid = src.active[i].tolist()
        return Row(layer, pos, coders.encoder_vectors(layer, torch.tensor([fid], device=src.active.device))[0])

    if n_sel == src.n_active:
        order = torch.arange(src.n_active)
        return compute([row_of(i) for i in order.tolist()], progress), order
    n_t = len(target_edges)
    n_nodes = src.n_cols + n_t
    rows = torch.zeros(n_t + n_sel, n_nodes)
    rows[:n_t, : src.n_cols] = target_edges
    row_to_node = torch.zeros(n_t + n_sel, dtype=torch.long)
    row_to_node[:n_t] = torch.arange(src.n_cols, n_nodes)
    visited = torch.zeros(src.n_active, dtype=torch.bool)
    done = n_t
    while done - n_t < n_sel:
        infl = partial_influences(rows[:done], weights, row_to_node[:done])[: src.n_active]
        rank = torch.argsort(infl, descending=True)
        pending = rank[~visited[rank]][: min(ROUND_BATCHES * batch_size, n_sel - (done - n_t))]
        got = compute([row_of(i) for i in pending.tolist()], progress)
        rows[done : done + len(pending), : src.n_cols] = got
        row_to_node[done : done + len(pending)] = pending
        visited[pending] = True
        done += len(pending)
    order = row_to_node[n_t:]
    return rows[n_t:, : src.n_cols], order


def _assemble(src, selected, feature_rows, order, target_edges, rec, t_tokens, t_specs, t_weights) -> Graph:
    """The adjacency in node order [selected features, errors, tokens, targets]."""
    n_sel, n_t = len(selected), len(target_edges)
    cols = torch.cat([selected, torch.arange(src.n_active, src.n_cols)])
    n_nodes = len(cols) + n_t
    adj = torch.zeros(n_nodes, n_nodes)
    pos_of = torch.empty(src.n_active, dtype=torch.long)
    pos_of[selected] = torch.arange(n_sel)
    dest = pos_of[order]
    for b in range(0, len(order), 1024):  # in blocks: no second copy of the rows (1 GB for 64 tokens)
        adj[dest[b : b + 1024], : len(cols)] = feature_rows[b : b + 1024][:, cols]
    adj[n_nodes - n_t :, : len(cols)] = target_edges[:, cols]
    return Graph(
        prompt="",
        tokens=rec.tokens.cpu().clone(),
        token_strings=[],
        n_layers=src.n_layers,
        active_features=src.active.cpu(),
        activation_values=src.values.cpu(),
        selected_features=selected,
        adjacency=adj,
        target_tokens=torch.tensor(t_tokens, dtype=torch.long),
        target_labels=[],
        target_weights=t_weights.float(),
        meta={},
    )
