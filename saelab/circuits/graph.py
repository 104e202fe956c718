"""The attribution graph of one prompt (the contract between attribution, pruning, the JSON and the view),
and its folder: `graph.safetensors` (the tensors) + `graph.json` (what they mean), both written atomically,
graph.json last, so a folder with a graph.json holds a whole graph.

Node order is circuit-tracer's, so an index means the same thing in both tools:

    [selected features (n_sel)] [errors: layer-major, n_layers x n_pos] [tokens (n_pos)] [targets (n_targets)]

`adjacency[target, source]` is the direct effect of `source` on `target`'s input; token and error rows are 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..storage import read_json, read_tensors, write_json, write_tensors

FORMAT, VERSION = "saelab-graph", 1
TENSORS, META = "graph.safetensors", "graph.json"
TENSOR_NAMES = (
    "tokens",
    "active_features",
    "activation_values",
    "selected_features",
    "adjacency",
    "target_tokens",
    "target_weights",
)
KINDS = ("feature", "error", "token", "target")


@dataclass
class Graph:
    """An attribution graph (`saelab attribute`, `saelab.attribute`): the prompt's nodes in a fixed order
    (selected features, then error nodes per (layer, position), then tokens, then targets) and the direct
    effect of every node on every other (`adjacency[target, source]`, logit units for the targets). Saved
    as graph.safetensors + graph.json (docs/FORMATS.md); `load_graph(folder)` reads one back."""

    prompt: str
    tokens: torch.Tensor  # [n_pos] long: the prompt's token ids, as the model saw them
    token_strings: list[str]  # [n_pos] each token decoded
    n_layers: int  # the MODEL's layers: every layer has error nodes, with or without a dictionary
    active_features: torch.Tensor  # [n_active, 3] long: (layer, position, feature id in that layer's dictionary)
    activation_values: torch.Tensor  # [n_active] float32
    selected_features: torch.Tensor  # [n_sel] long: indices into active_features, in node order
    adjacency: torch.Tensor  # [n_nodes, n_nodes] float32: [target, source] = direct effect
    target_tokens: torch.Tensor  # [n_targets] long: vocab id of a logit target; -1 for a custom target
    target_labels: list[str]  # [n_targets] ' b', '" b" - " a"', 'L12/P5/F301'
    target_weights: torch.Tensor  # [n_targets] float32: logit probabilities (custom targets: 1 / n_targets)
    meta: dict = field(default_factory=dict)  # replacement, model spec, scan, zero_positions, exactness, scores...

    # ------------------------------------------------------------ sizes and node indices
    @property
    def n_sel(self) -> int:
        """Feature nodes (the selected features)."""
        return int(self.selected_features.shape[0])

    @property
    def n_pos(self) -> int:
        """Prompt positions (tokens)."""
        return int(self.tokens.shape[0])

    @property
    def n_targets(self) -> int:
        """Target nodes (logits, a logit difference, or a feature)."""
        return int(self.target_weights.shape[0])

    @property
    def n_errors(self) -> int:
        """Error nodes: one per (model layer, position)."""
        return self.n_layers * self.n_pos

    @property
    def n_nodes(self) -> int:
        """All nodes: features, errors, tokens, targets."""
        return self.n_sel + self.n_errors + self.n_pos + self.n_targets

    @property
    def error_start(self) -> int:
        """The index of the first error node."""
        return self.n_sel

    @property
    def token_start(self) -> int:
        """The index of the first token node."""
        return self.n_sel + self.n_errors

    @property
    def target_start(self) -> int:
        """The index of the first target node."""
        return self.token_start + self.n_pos

    def error_index(self, layer: int, pos: int) -> int:
        """The node of layer `layer`'s error at position `pos` (layer-major, as circuit-tracer)."""
        if not (0 <= layer < self.n_layers and 0 <= pos < self.n_pos):
            raise IndexError(f"no error node at layer {layer}, position {pos} ({self.n_layers} x {self.n_pos})")
        return self.n_sel + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        """The node of the token at position `pos`."""
        if not 0 <= pos < self.n_pos:
            raise IndexError(f"no token node at position {pos} (the prompt has {self.n_pos} tokens)")
        return self.token_start + pos

    def target_index(self, i: int) -> int:
        """The node of target `i` (target_labels order)."""
        if not 0 <= i < self.n_targets:
            raise IndexError(f"no target {i} (the graph has {self.n_targets})")
        return self.target_start + i

    def node_kind(self, node: int) -> str:
        """'feature' | 'error' | 'token' | 'target'."""
        if not 0 <= node < self.n_nodes:
            raise IndexError(f"no node {node} (the graph has {self.n_nodes})")
        starts = (0, self.error_start, self.token_start, self.target_start)
        return next(k for k, s in reversed(list(zip(KINDS, starts))) if node >= s)

    def node_kinds(self) -> list[str]:
        """The kind of every node, node order."""
        return (
            ["feature"] * self.n_sel + ["error"] * self.n_errors + ["token"] * self.n_pos + ["target"] * self.n_targets
        )

    def feature(self, node: int) -> tuple[int, int, int]:
        """(layer, position, feature id) of feature node `node`."""
        if not 0 <= node < self.n_sel:
            raise IndexError(f"node {node} is not a feature node (there are {self.n_sel})")
        layer, pos, fid = self.active_features[self.selected_features[node]].tolist()
        return int(layer), int(pos), int(fid)

    def error_of(self, node: int) -> tuple[int, int]:
        """(layer, position) of error node `node`."""
        if self.node_kind(node) != "error":
            raise IndexError(f"node {node} is not an error node")
        return divmod(node - self.error_start, self.n_pos)

    def feature_activations(self) -> torch.Tensor:
        """[n_sel] the activation of each feature node."""
        return self.activation_values[self.selected_features]

    # ------------------------------------------------------------ checks
    def check(self, where: str = "graph") -> None:
        """Shapes and indices agree with each other; a UserError naming `where` otherwise."""

        def bad(msg: str):
            raise UserError(f"{where}: {msg}; it is not a consistent saelab graph")

        n_active = self.active_features.shape[0] if self.active_features.dim() == 2 else -1
        if self.tokens.dim() != 1 or self.n_pos == 0:
            bad(f"tokens has shape {tuple(self.tokens.shape)}, not [n_pos > 0]")
        if len(self.token_strings) != self.n_pos:
            bad(f"{len(self.token_strings)} token strings for {self.n_pos} tokens")
        if not isinstance(self.n_layers, int) or self.n_layers < 1:
            bad(f"n_layers is {self.n_layers!r}")
        if self.active_features.dim() != 2 or self.active_features.shape[1] != 3:
            bad(f"active_features has shape {tuple(self.active_features.shape)}, not [n_active, 3]")
        if tuple(self.activation_values.shape) != (n_active,):
            bad(f"activation_values has shape {tuple(self.activation_values.shape)}, not [{n_active}]")
        if self.selected_features.dim() != 1:
            bad("selected_features is not a vector")
        if self.n_sel and not (0 <= int(self.selected_features.min()) and int(self.selected_features.max()) < n_active):
            bad(f"selected_features index outside the {n_active} active features")
        if n_active and not (
            0 <= int(self.active_features[:, 0].min()) and int(self.active_features[:, 0].max()) < self.n_layers
        ):
            bad(f"an active feature's layer is outside the model's {self.n_layers} layers")
        if n_active and not (
            0 <= int(self.active_features[:, 1].min()) and int(self.active_features[:, 1].max()) < self.n_pos
        ):
            bad(f"an active feature's position is outside the prompt's {self.n_pos} tokens")
        if self.target_tokens.shape != self.target_weights.shape or self.target_weights.dim() != 1:
            bad(f"{tuple(self.target_tokens.shape)} target tokens but {tuple(self.target_weights.shape)} weights")
        if self.n_targets == 0:
            bad("the graph has no targets")
        if len(self.target_labels) != self.n_targets:
            bad(f"{len(self.target_labels)} target labels for {self.n_targets} targets")
        if tuple(self.adjacency.shape) != (self.n_nodes, self.n_nodes):
            bad(f"adjacency has shape {tuple(self.adjacency.shape)}, not {self.n_nodes} x {self.n_nodes}")


# ---------------------------------------------------------------- files
def save_graph(graph: Graph, out_dir) -> Path:
    """`out_dir/graph.safetensors` then `out_dir/graph.json` (the marker, last), atomically; returns out_dir."""
    graph.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        "tokens": graph.tokens.long(),
        "active_features": graph.active_features.long(),
        "activation_values": graph.activation_values.float(),
        "selected_features": graph.selected_features.long(),
        "adjacency": graph.adjacency.float(),
        "target_tokens": graph.target_tokens.long(),
        "target_weights": graph.target_weights.float(),
    }
    write_tensors(out / TENSORS, tensors, metadata={"format": FORMAT, "version": str(VERSION)})
    head = {
        "format": FORMAT,
        "version": VERSION,
        "prompt": graph.prompt,
        "token_strings": list(graph.token_strings),
        "target_labels": list(graph.target_labels),
        "n_layers": graph.n_layers,
        "n_nodes": graph.n_nodes,
        "meta": graph.meta,
    }
    write_json(out / META, head)
    return out


def is_graph_folder(path) -> bool:
    """A folder holding a saelab graph (its graph.json says so); never raises."""
    try:
        m = read_json(Path(path) / META)
    except (UserError, OSError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


def load_graph(path) -> Graph:
    """The graph in folder `path` (or the folder of `path`, its graph.json or graph.safetensors). Anything
    that is not a saelab graph, or a damaged one, is a UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in (META, TENSORS):
        raise UserError(f"{path} is not a saelab graph: a graph is a folder with {META} and {TENSORS}")
    if not (folder / META).is_file():
        raise UserError(f"{folder} is not a saelab graph folder: it has no {META} (write one with `saelab attribute`)")
    head = read_json(folder / META)
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise UserError(f"{folder / META} is not a saelab graph (format {FORMAT!r})")
    if not isinstance(head.get("version"), int) or head["version"] > VERSION:
        raise UserError(f"{folder / META} has version {head.get('version')!r}; this saelab reads up to {VERSION}")
    missing = [k for k in ("prompt", "token_strings", "target_labels", "n_layers") if k not in head]
    if missing:
        raise UserError(f"{folder / META} lacks {', '.join(missing)}")
    if not (folder / TENSORS).is_file():
        raise UserError(f"{folder} holds {META} but no {TENSORS}: the graph is incomplete")
    t = read_tensors(folder / TENSORS)
    missing = [k for k in TENSOR_NAMES if k not in t]
    if missing:
        raise UserError(f"{folder / TENSORS} lacks the tensors {', '.join(missing)}; it is not a saelab graph")
    g = Graph(
        prompt=head["prompt"],
        token_strings=list(head["token_strings"]),
        target_labels=list(head["target_labels"]),
        n_layers=head["n_layers"],
        meta=head.get("meta") or {},
        **{k: t[k] for k in TENSOR_NAMES},
    )
    g.check(str(folder))
    return g
