"""The graph files `saelab serve --graphs DIR` shows: circuit-tracer / Neuronpedia attribution-graph JSON
({"metadata", "qParams", "nodes", "links"}; circuit_tracer/frontend/graph_models.py is the schema).

Node ids follow circuit-tracer: a feature `{layer}_{feature}_{pos}`, an MLP error node `0_{layer}_{pos}`, a
token `E_{token id}_{pos}` (layer "E"), a logit `{n_layers + 1}_{token id}_{pos}` (feature_type "logit").

`load_view_graph(path)` is the one place that reads a graph file for the page: the circuits stage's reader
(`saelab.circuits.neuronpedia.read_graph_json`), as a plain dict, its errors naming the file only.
Listing: the `*.json` files in DIR and one folder below (where `saelab attribute --out DIR/NAME` writes
`NAME/<slug>.json`), except saelab's `graph.json` meta and circuit-tracer's `graph-metadata.json`. A slug is
a file name without `.json`, matched against that listing only, so no URL names a path.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from ..circuits.neuronpedia import read_graph_json
from ..errors import UserError
from ..storage import write_json

MAX_GRAPH_BYTES = 256 * 1024 * 1024  # a pruned graph is a few MB; refuse a file that cannot be one
SKIP = ("graph.json", "graph-metadata.json")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SUPERNODE_NAME = 100
_save_lock = threading.Lock()


def load_view_graph(path: Path) -> dict:
    """The graph at `path` as the page draws it: {"metadata", "qParams", "nodes", "links"}, read and checked by
    the circuits stage's reader (circuits/neuronpedia.py); a file that is not a graph -> UserError naming the
    file (by its name only: the page shows it) and what is wrong."""
    path = Path(path)
    if path.stat().st_size > MAX_GRAPH_BYTES:
        raise UserError(f"{path.name} is over {MAX_GRAPH_BYTES >> 20} MiB; not a graph file this page opens")
    try:
        g = read_graph_json(path)
    except UserError as e:
        raise UserError(str(e).replace(str(path), path.name)) from None
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not a graph: not UTF-8 text") from None
    q = {**g.qParams, "pinnedIds": _pinned(g.qParams.get("pinnedIds")), "supernodes": g.qParams.get("supernodes") or []}
    return {"metadata": g.metadata, "qParams": q, "nodes": g.nodes, "links": g.links}


def _pinned(v) -> list[str]:
    """circuit-tracer writes a list; Neuronpedia's URLs carry the same ids comma-joined."""
    if isinstance(v, str):
        return [s for s in v.split(",") if s]
    return list(v or [])


def list_graph_files(root: Path) -> dict[str, Path]:
    """slug -> file, for every candidate graph file under `root` (two levels); a later duplicate name gets
    `_2`, `_3`... The files are not opened here: one that is not a graph says so when it is opened."""
    root = Path(root)
    out: dict[str, Path] = {}
    files = sorted(root.glob("*.json")) + sorted(root.glob("*/*.json"))
    for f in files:
        if f.name in SKIP or f.name.startswith(".") or not f.is_file():
            continue
        slug = base = f.stem
        if not SLUG.match(base):
            continue  # a name a URL cannot carry plainly
        k = 2
        while slug in out:
            slug, k = f"{base}_{k}", k + 1
        out[slug] = f
    return out


def graph_path(root: Path, slug: str) -> Path:
    """The file of `slug`: only names in the listing, so `..` or an absolute path never reaches the disk."""
    files = list_graph_files(root) if SLUG.match(slug) else {}
    if slug not in files:
        raise LookupError(f"no graph {slug!r} in {Path(root).name}/ (listed at /graphs)")
    return files[slug]


def summary(slug: str, path: Path) -> dict:
    """One row of /graphs: the prompt and sizes, or why the file is not a graph."""
    try:
        g = load_view_graph(path)
    except UserError as e:
        return {"slug": slug, "file": path.name, "error": str(e)}
    m = g["metadata"]
    return {
        "slug": slug,
        "file": path.name,
        "prompt": m.get("prompt") or "".join(map(str, m["prompt_tokens"])),
        "scan": m.get("scan"),
        "n_nodes": len(g["nodes"]),
        "n_links": len(g["links"]),
        "n_pinned": len(g["qParams"]["pinnedIds"]),
    }


def check_state(graph: dict, pinned: list[str], supernodes: list[list[str]]) -> None:
    """Pinned ids and supernode members must be nodes of the graph; a supernode is [name, id, ...]."""
    ids = {n["node_id"] for n in graph["nodes"]}
    bad = [i for i in pinned if i not in ids]
    if bad:
        raise UserError(f"pinned ids not in the graph: {bad[:5]}")
    for sn in supernodes:
        if len(sn) < 2 or not sn[0].strip() or len(sn[0]) > MAX_SUPERNODE_NAME:
            raise UserError(f"a supernode is [name (1..{MAX_SUPERNODE_NAME} chars), node id, ...]; got {sn[:3]}")
        bad = [i for i in sn[1:] if i not in ids]
        if bad:
            raise UserError(f"supernode {sn[0]!r} names ids not in the graph: {bad[:5]}")


def save_state(path: Path, pinned: list[str], supernodes: list[list[str]]) -> dict:
    """Write the page's pins and supernodes into the file's qParams (everything else kept as it was),
    atomically (a crash leaves the old file); -> the new qParams."""
    with _save_lock:
        graph = load_view_graph(path)
        check_state(graph, pinned, supernodes)
        raw = json.loads(path.read_text(encoding="utf-8"))
        q = raw.get("qParams") or {}
        q.update(pinnedIds=list(pinned), supernodes=[list(s) for s in supernodes])
        for k, v in (("linkType", "both"), ("clickedId", ""), ("sg_pos", "")):
            q.setdefault(k, v)  # circuit-tracer's QParams has these five fields
        raw["qParams"] = q
        write_json(path, raw)
        return q
