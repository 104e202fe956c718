"""The graph JSON of circuit-tracer and Neuronpedia: write a pruned Graph in it, read one back (ours or one
circuit-tracer wrote) as a ViewGraph, which is what the graph page shows.

The file (circuit-tracer's utils/create_graph_files.py, schema frontend/graph_models.py):

    {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version},
     "qParams": {pinnedIds, supernodes, linkType, clickedId, sg_pos},
     "nodes": [{node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx,
                reverse_ctx_idx, jsNodeId, clerp, influence, activation}, ...],
     "links": [{source, target, weight}, ...]}

Node ids: a feature `L_F_P` (layer, feature id, position), an error `0_L_P`, a token `E_V_P` (vocab id), a
target `{n_layers + 1}_V_P` (P: the last position; a custom target's V is vocab_size + its index, circuit-
tracer's virtual index). A feature's `feature` is circuit-tracer 0.5's Cantor pairing of (layer, feature id);
we add `feature_layer` and `feature_id` (plain ints; extra keys that circuit-tracer's reader ignores).

circuit-tracer's ids collide: the error of layer L at P and the feature (layer 0, id L) at P are both `0_L_P`
(its viewer then keeps one of the two). We write such an error as `0_L_P_error`, and the reader renames the
error node of a file that has the collision the same way (the links named by the id stay on the feature).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..storage import read_json, write_json
from .graph import META, Graph
from .prune import PruneResult

FEATURE, ERROR, TOKEN, LOGIT = "cross layer transcoder", "mlp reconstruction error", "embedding", "logit"
INDEX = "graph-metadata.json"  # circuit-tracer's list of the graphs in a folder
RESERVED = {Path(META).stem, Path(INDEX).stem, "manifest"}
ERROR_SUFFIX = "_error"  # an error node whose circuit-tracer id `0_L_P` is also a feature's (layer 0, id L, at P)
SCHEMA_VERSION = 1


def cantor_pairing(x: int, y: int) -> int:
    """circuit-tracer 0.5's `feature` of a feature node: one integer for (layer, feature id)."""
    return (x + y) * (x + y + 1) // 2 + y


def slugify(text: str) -> str:
    """A Neuronpedia slug (lower case letters, digits, '-', '_') that is not one of our file names."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-_") or "graph"
    return f"saelab-{slug}" if slug in RESERVED else slug


# ---------------------------------------------------------------- write
def _node(node_id, feature, layer, pos, kind, jsid, influence=None, activation=None, **extra) -> dict:
    """One node, every field of circuit-tracer's Node in its order (then ours)."""
    return {
        "node_id": node_id,
        "feature": int(feature),
        "layer": str(layer),
        "ctx_idx": int(pos),
        "feature_type": kind,
        "token_prob": extra.pop("token_prob", 0.0),
        "is_target_logit": extra.pop("is_target_logit", False),
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": jsid,
        "clerp": extra.pop("clerp", ""),
        "influence": influence,
        "activation": activation,
        **extra,
    }


def target_vocab_ids(graph: Graph, vocab_size: int | None = None) -> list[int]:
    """Each target's vocab id; a custom target (-1) gets vocab_size + its index (circuit-tracer's virtual
    index); without a vocab size, one past the largest id in the graph, so ids stay unique."""
    ids = [int(t) for t in graph.target_tokens.tolist()]
    if vocab_size is None:
        vocab_size = graph.meta.get("vocab_size") or max([*ids, *graph.tokens.tolist(), -1]) + 1
    return [t if t >= 0 else int(vocab_size) + i for i, t in enumerate(ids)]


def graph_nodes(graph: Graph, node_mask, cumulative_scores, vocab_size: int | None = None) -> dict[int, dict]:
    """node index -> node dict, for every kept node (circuit-tracer's create_nodes)."""
    nodes: dict[int, dict] = {}
    vocab = target_vocab_ids(graph, vocab_size)
    acts = graph.activation_values
    for i in node_mask.nonzero().flatten().tolist():
        kind = graph.node_kind(i)
        influence = float(cumulative_scores[i])
        if kind == "feature":
            layer, pos, fid = graph.feature(i)
            nodes[i] = _node(
                f"{layer}_{fid}_{pos}",
                cantor_pairing(layer, fid),
                layer,
                pos,
                FEATURE,
                f"{layer}_{fid}-0",
                influence,
                float(acts[graph.selected_features[i]]),
                feature_layer=layer,
                feature_id=fid,
            )
        elif kind == "error":
            layer, pos = graph.error_of(i)
            nodes[i] = _node(f"0_{layer}_{pos}", -1, layer, pos, ERROR, f"{layer}_{pos}-0", influence)
        elif kind == "token":
            pos = i - graph.token_start
            v = int(graph.tokens[pos])
            nodes[i] = _node(f"E_{v}_{pos}", pos, "E", pos, TOKEN, f"E_{v}-{pos}", influence)
        else:
            t = i - graph.target_start
            layer, pos, v, prob = graph.n_layers + 1, graph.n_pos - 1, vocab[t], float(graph.target_weights[t])
            nodes[i] = _node(
                f"{layer}_{v}_{pos}",
                v,
                layer,
                pos,
                LOGIT,
                f"L_{v}-{pos}",
                token_prob=prob,
                is_target_logit=t == 0,
                clerp=f'Output "{graph.target_labels[t]}" (p={prob:.3f})',
            )
    features = {n["node_id"] for n in nodes.values() if n["feature_type"] == FEATURE}
    for n in nodes.values():
        if n["feature_type"] == ERROR and n["node_id"] in features:
            n["node_id"] += ERROR_SUFFIX
    return nodes


def graph_links(graph: Graph, nodes: dict[int, dict], edge_mask) -> tuple[list[dict], list[dict]]:
    """(nodes used, links): the kept edges between kept nodes, row-major (target, then source) as circuit-
    tracer lists them; the nodes that some link touches, plus every token and target node."""
    dsts, srcs = edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[dsts, srcs].tolist()
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[d]["node_id"], "weight": w}
        for s, d, w in zip(srcs.tolist(), dsts.tolist(), weights)
        if s in nodes and d in nodes
    ]
    touched = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values() if n["node_id"] in touched or n["feature_type"] in (TOKEN, LOGIT)]
    return used, links


def graph_json(
    graph: Graph,
    pruned: PruneResult,
    slug: str,
    scan: str,
    node_threshold: float = 0.8,
    vocab_size: int | None = None,
    extra_metadata: dict | None = None,
) -> dict:
    """The pruned graph as a circuit-tracer / Neuronpedia graph JSON (a dict). `extra_metadata` goes under
    metadata["saelab"] (readers of the schema ignore it)."""
    nodes = graph_nodes(graph, pruned.node_mask, pruned.cumulative_scores, vocab_size)
    used, links = graph_links(graph, nodes, pruned.edge_mask)
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": list(graph.token_strings),
        "prompt": graph.prompt,
        "node_threshold": node_threshold,
        "schema_version": SCHEMA_VERSION,
    }
    if extra_metadata:
        metadata["saelab"] = extra_metadata
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}


def write_graph_json(graph: Graph, pruned: PruneResult, out_dir, slug: str, scan: str, **kw) -> Path:
    """`out_dir/<slug>.json` (atomically), and the graph listed in `out_dir/graph-metadata.json` (circuit-
    tracer's index of a folder of graphs, which its local viewer reads). Returns the JSON's path."""
    if slugify(slug) != slug:
        raise ValueError(f"slug {slug!r} is not a file-safe slug; use slugify()")
    out = Path(out_dir)
    doc = graph_json(graph, pruned, slug, scan, **kw)
    path = out / f"{slug}.json"
    write_json(path, doc)
    index = out / INDEX
    listed = read_json(index).get("graphs", []) if index.is_file() else []
    entry = {k: v for k, v in doc["metadata"].items() if k != "saelab"}
    write_json(index, {"graphs": [g for g in listed if g.get("slug") != slug] + [entry]})
    return path


# ---------------------------------------------------------------- read
@dataclass
class ViewGraph:
    """A graph JSON as read back: the four parts, each node and link checked and completed with the schema's
    defaults. `path`: the file it came from."""

    nodes: list[dict]
    links: list[dict]
    metadata: dict
    qParams: dict
    path: Path | None = None
    by_id: dict[str, dict] = field(default_factory=dict, repr=False)

    def feature_of(self, node: dict) -> tuple[int, int] | None:
        """(layer, feature id) of a feature node (None for other nodes): our own fields, else its node_id."""
        if node["feature_type"] != FEATURE:
            return None
        if "feature_layer" in node and "feature_id" in node:
            return int(node["feature_layer"]), int(node["feature_id"])
        layer, fid, _ = node["node_id"].split("_")
        return int(layer), int(fid)


NODE_DEFAULTS = {
    "token_prob": 0.0,
    "is_target_logit": False,
    "run_idx": 0,
    "reverse_ctx_idx": 0,
    "clerp": "",
    "influence": None,
    "activation": None,
}
QPARAM_DEFAULTS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def find_graph_json(folder: Path) -> Path:
    """The graph JSON in a folder: the one graph-metadata.json lists, else the one *.json that is not ours."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        listed = read_json(folder / INDEX).get("graphs") or []
        hits = [folder / f"{g.get('slug')}.json" for g in listed if isinstance(g, dict)]
        hits = [p for p in hits if p.is_file()]
        if len(hits) == 1:
            return hits[0]
    cands = sorted(p for p in folder.glob("*.json") if p.stem not in RESERVED)
    if len(cands) != 1:
        what = "none" if not cands else ", ".join(p.name for p in cands)
        raise UserError(f"{folder}: expected one graph JSON (<slug>.json) in the folder, found {what}; name the file")
    return cands[0]


def read_graph_json(path) -> ViewGraph:
    """A circuit-tracer / Neuronpedia graph JSON (a file, or a folder holding one): checked, every error a
    UserError naming the file and the entry."""
    path = Path(path)
    if path.is_dir():
        path = find_graph_json(path)
    doc = read_json(path)
    what = "not a circuit-tracer / Neuronpedia graph JSON"

    def bad(msg: str):
        raise UserError(f"{path}: {msg}; {what}")

    if not isinstance(doc, dict):
        bad("the file holds no JSON object")
    if doc.get("format") == "saelab-graph":
        bad(f"this is saelab's {META} (the tensors' description); read the <slug>.json beside it")
    for key, typ in (("metadata", dict), ("nodes", list), ("links", list)):
        if not isinstance(doc.get(key), typ):
            bad(f"it has no {key!r} {'object' if typ is dict else 'list'}")
    meta = doc["metadata"]
    if not isinstance(meta.get("prompt_tokens"), list):
        bad("metadata has no prompt_tokens list")
    qparams = QPARAM_DEFAULTS | (doc.get("qParams") if isinstance(doc.get("qParams"), dict) else {})
    nodes, by_id = [], {}
    for i, n in enumerate(doc["nodes"]):
        if not isinstance(n, dict):
            bad(f"node {i} is not an object")
        for key, typ in (("node_id", str), ("feature_type", str), ("ctx_idx", int), ("feature", int)):
            if not isinstance(n.get(key), typ) or isinstance(n.get(key), bool):
                bad(f"node {i} has no {typ.__name__} {key!r}")
        if not isinstance(n.get("layer"), (str, int)):
            bad(f"node {n['node_id']} has no layer")
        node = NODE_DEFAULTS | n | {"layer": str(n["layer"]), "jsNodeId": n.get("jsNodeId") or n["node_id"]}
        twin = by_id.get(node["node_id"])
        if twin is not None:  # circuit-tracer's feature / error collision: the error node is renamed
            kinds = {twin["feature_type"], node["feature_type"]}
            if kinds != {FEATURE, ERROR}:
                bad(f"node id {node['node_id']!r} appears twice")
            error = node if node["feature_type"] == ERROR else by_id.pop(twin["node_id"])
            error["node_id"] += ERROR_SUFFIX
            by_id[error["node_id"]] = error
        if node["feature_type"] == FEATURE and "feature_layer" not in node:
            parts = node["node_id"].split("_")
            if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
                bad(f"feature node {node['node_id']!r} is not named LAYER_FEATURE_POSITION")
        nodes.append(node)
        by_id.setdefault(node["node_id"], node)
    links = []
    for i, link in enumerate(doc["links"]):
        if not isinstance(link, dict):
            bad(f"link {i} is not an object")
        for end in ("source", "target"):
            if link.get(end) not in by_id:
                bad(f"link {i}'s {end} {link.get(end)!r} is not one of its nodes")
        w = link.get("weight")
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            bad(f"link {i} has no numeric weight")
        links.append({"source": link["source"], "target": link["target"], "weight": float(w)})
    return ViewGraph(nodes, links, meta, qparams, path, by_id)
