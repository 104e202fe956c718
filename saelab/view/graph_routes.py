"""The attribution-graph pages of `saelab serve --graphs DIR [--replacement REPL]` (issue 32, item 4).

Routes (added to web_app's app by `add_graph_routes`)
  GET  /graphs                         the list of graphs in DIR and the "compute a graph" form (HTML)
  GET  /graph/{slug}                   one graph: nodes by layer x position, links, pins, supernodes (HTML)
  GET  /api/graphs                     the list as JSON (a file that is not a graph: its row says why)
  GET  /api/graph/{slug}               the graph JSON, feature nodes annotated with the served SAE's
                                       explanation and feature page (feature_store's lookup)
  POST /api/graph/{slug}/state         {pinnedIds, supernodes} -> written into the file's qParams (atomic)
  POST /api/graph/{slug}/intervene     {edits: [{node_id, op, value}]} -> top logits before / after
  POST /api/graphs/compute             {prompt, slug?} -> a graph job in web_app's one job queue (202; 429
                                       beyond its bound); progress / cancel at /api/jobs/{id}

A slug is looked up in DIR's listing only (graph_files.graph_path), so no URL names a path. Computing and
intervening need `--replacement` (the model and its transcoders); without it, or without the circuits
modules, they answer 400 / 501 with a one-line reason.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import torch
from fastapi import HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ..circuits.neuronpedia import slugify
from ..errors import UserError
from ..features.steer import Cancelled, encode_prompt
from ..models import layer_index
from .graph_files import graph_path, list_graph_files, load_view_graph, save_state, summary
from .graph_page import GRAPH_HTML, GRAPHS_HTML

MAX_PROMPT_CHARS = 2000
MAX_GRAPH_TOKENS = 64  # a graph's cost grows with positions x active features; the page keeps jobs short
N_SHOWN_LOGITS = 10


class StateRequest(BaseModel):
    pinnedIds: list[str] = Field(max_length=2000)
    supernodes: list[list[str]] = Field([], max_length=200)


class NodeEdit(BaseModel):
    node_id: str = Field(max_length=64)
    op: str = Field("ablate", pattern="^(ablate|scale|clamp)$")
    value: float = Field(0.0, allow_inf_nan=False, ge=-1e4, le=1e4)


class InterveneRequest(BaseModel):
    edits: list[NodeEdit] = Field(min_length=1, max_length=64)


class ComputeRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    slug: str | None = Field(None, max_length=100)


def feature_of(node: dict) -> tuple[int, int, int] | None:
    """(layer, position, feature id) of a feature node: saelab's `feature_layer` / `feature_id` fields, else its
    id `{layer}_{feature}_{pos}`; None for error, token and logit nodes."""
    t = node["feature_type"]
    if t in ("embedding", "logit") or "error" in t:
        return None
    if "feature_layer" in node and "feature_id" in node:
        return int(node["feature_layer"]), int(node["ctx_idx"]), int(node["feature_id"])
    parts = node["node_id"].split("_")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    layer, fid, pos = map(int, parts)
    return layer, pos, fid


class GraphState:
    """The graph folder, and (with --replacement) the model and transcoders for interventions and jobs."""

    def __init__(self, app, root: Path, replacement=None, lm=None):
        self.app, self.root, self.replacement, self.lm = app, Path(root), replacement, lm
        self.lock = app.locks.setdefault(id(lm.model), threading.Lock()) if lm is not None else None
        self.taken: set[str] = set()  # slugs of the graph jobs started (a queued job's file does not exist yet)

    def path(self, slug: str) -> Path:
        try:
            return graph_path(self.root, slug)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None

    def store_of(self, layer: int):
        """The served transcoder of layer `layer` (a per-layer transcoder reading that layer's MLP input, or a
        CLT over it; never an SAE of the residual stream, whose latents are not the graph's features) -> (store,
        offset of the layer's features in it); the first served one wins."""
        for s in self.app.stores.values():
            if s.clt and layer in s.model_layers:
                return s, s.model_layers.index(layer) * s.sae.n_per_layer
            if not s.clt and s.sae.cfg.is_transcoder and layer_index(s.model, s.sae.cfg.hookpoint) == layer:
                return s, 0
        return None, 0

    def annotated(self, slug: str) -> dict:
        """The graph with, per feature node, its served explanation and feature page (when its transcoder is served)."""
        from urllib.parse import quote

        g = load_view_graph(self.path(slug))
        for n in g["nodes"]:
            ref = feature_of(n)
            s, off = self.store_of(ref[0]) if ref else (None, 0)
            if s is not None and 0 <= off + ref[2] < s.d_sae:
                i = off + ref[2]
                n["explanation"] = s.explanation(i)
                n["feature_url"] = f"/sae/{quote(s.name, safe='')}/feature/{i}"
                n["feature_api"] = f"/api/sae/{quote(s.name, safe='')}/feature/{i}"
        return {"slug": slug, **g, "can_run": self.lm is not None}

    def need_model(self, what: str):
        if self.lm is None:
            raise UserError(f"{what} needs the model: start `saelab serve` with --replacement REPLACEMENT_DIR")

    # ------------------------------------------------------------ interventions
    def intervene(self, slug: str, req: InterveneRequest) -> dict:
        self.need_model("an intervention")
        try:
            from ..circuits.interventions import intervene
        except ModuleNotFoundError:
            raise HTTPException(
                501, "interventions are not available: saelab.circuits.interventions is missing"
            ) from None
        g = load_view_graph(self.path(slug))
        nodes = {n["node_id"]: n for n in g["nodes"]}
        edits = []
        for e in req.edits:
            ref = feature_of(nodes[e.node_id]) if e.node_id in nodes else None
            if ref is None:
                raise UserError(f"{e.node_id!r} is not a feature node of graph {slug!r}")
            layer, pos, fid = ref
            edits.append((layer, pos, fid, e.op, e.value))
        tokens = graph_tokens(g, self.lm.tokenizer)
        vocab = self.lm.model.get_input_embeddings().weight.shape[0]
        if int(tokens.max()) >= vocab:  # a graph of another model (its token nodes name ids this one lacks)
            raise UserError(f"graph {slug!r} has token id {int(tokens.max())}; the served model has {vocab} tokens")
        with self.lock:
            r = intervene(self.lm.model, self.replacement, tokens, edits=edits, mode="replacement")
        out = {"edits": [list(e) for e in edits]} | top_logits(r.logits_before, r.logits_after, self.lm.tokenizer)
        changed = r.top_changed(N_SHOWN_LOGITS) if hasattr(r, "top_changed") else []  # downstream features
        out["features"] = [
            c | {"node_id": (i := f"{c['layer']}_{c['feature']}_{c['position']}"), "in_graph": i in nodes}
            for c in changed
        ]
        return out

    # ------------------------------------------------------------ graph jobs
    def start_compute(self, req: ComputeRequest):
        self.need_model("computing a graph")
        encode_prompt(self.lm.tokenizer, req.prompt, max_tokens=MAX_GRAPH_TOKENS)  # too long: a 4xx now
        slug = req.slug or _free_slug(self.root, req.prompt, self.taken)
        if (
            slugify(slug) != slug
            or slug in self.taken | set(list_graph_files(self.root))
            or (self.root / slug).exists()
        ):
            raise UserError(f"graph name {slug!r} is taken or not a slug (lower case letters, digits, '-', '_')")
        self.taken.add(slug)

        def work(job) -> dict:
            def progress(*args):  # the stage's progress(rows done, rows in all): the message, the point to cancel
                if job.cancel.is_set():
                    raise Cancelled()
                if len(args) == 2 and all(isinstance(a, int) for a in args):
                    job.message = f"attribution rows {args[0]}/{args[1]}"
                elif args:
                    job.message = " ".join(str(a) for a in args)

            progress("loading the model and attributing")
            out = self.root / slug  # did not exist when the job was queued; the name is reserved
            try:
                compute_graph(self.replacement, req.prompt, out, slug, progress, self.lm)
                if job.cancel.is_set():  # cancelled after the last progress call (pruning, writing)
                    raise Cancelled()
            except Cancelled:
                shutil.rmtree(out, ignore_errors=True)  # whatever this job wrote there: no half graph is left
                raise
            return {"slug": slug, "url": f"/graph/{slug}"}

        return self.app.submit(work, kind="graph", generations=1, message="queued")


def compute_graph(replacement, prompt: str, out: Path, slug: str, progress, lm=None) -> Path:
    """The attribution graph of `prompt` written into the new folder `out` (graph.safetensors, graph.json,
    `<slug>.json`) by the circuits stage's own function, with its checks (circuits/run.py), on the model
    the app already holds (`lm`). -> the folder."""
    from ..circuits.config import AttributeConfig
    from ..circuits.run import attribute_prompt

    cfg = AttributeConfig(replacement=str(replacement.path), prompt=prompt, out=str(out), slug=slug)
    return attribute_prompt(cfg, progress=progress, lm=lm)


def _free_slug(root: Path, prompt: str, reserved: set[str]) -> str:
    base = slugify(prompt)[:40].strip("-_") or "graph"
    taken, k, slug = reserved | set(list_graph_files(root)), 2, base
    while slug in taken or (Path(root) / slug).exists():
        slug, k = f"{base}-{k}", k + 1
    return slug


def graph_tokens(g: dict, tokenizer) -> torch.Tensor:
    """[n_pos] the prompt's ids: from the embedding nodes `E_{id}_{pos}` (a graph keeps one per position),
    else the prompt re-encoded."""
    n_pos = len(g["metadata"]["prompt_tokens"])
    ids = {}
    for n in g["nodes"]:
        parts = n["node_id"].split("_")
        if n["feature_type"] == "embedding" and len(parts) == 3 and parts[1].isdigit():
            ids[n["ctx_idx"]] = int(parts[1])
    if sorted(ids) == list(range(n_pos)):
        return torch.tensor([ids[p] for p in range(n_pos)], dtype=torch.long)
    prompt = g["metadata"].get("prompt")
    if not prompt:
        raise UserError("this graph names neither every position's token nor its prompt")
    return encode_prompt(tokenizer, prompt, max_tokens=MAX_GRAPH_TOKENS)[0]


def top_logits(before: torch.Tensor, after: torch.Tensor, tokenizer, k: int = N_SHOWN_LOGITS) -> dict:
    """The top-k next tokens before and after (last position), with probabilities and logits."""

    def last(x):
        x = torch.as_tensor(x).detach().float()
        return x.reshape(-1, x.shape[-1])[-1]  # [vocab]

    b, a = last(before), last(after)
    out = {}
    for name, x in (("before", b), ("after", a)):
        p = x.softmax(-1)
        v, i = p.topk(min(k, p.numel()))
        out[name] = [
            {"token": tokenizer.decode([int(t)]), "id": int(t), "prob": float(q), "logit": float(x[t]),
             "prob_before": float(b.softmax(-1)[t]), "prob_after": float(a.softmax(-1)[t])}
            for q, t in zip(v, i)
        ]  # fmt: skip
    return out


def add_graph_routes(api, app, graphs: Path, replacement=None, lm=None) -> GraphState:
    """Register the graph pages on `api` (web_app.create_app) over the graph folder `graphs`."""
    g = GraphState(app, graphs, replacement, lm)

    @api.get("/graphs", response_class=HTMLResponse)
    async def graphs_page():
        return GRAPHS_HTML

    @api.get("/graph/{slug}", response_class=HTMLResponse)
    def graph_page(slug: str):
        try:
            load_view_graph(g.path(slug))  # an unknown slug: "Not found"; a file that is not a graph: why
        except UserError as e:
            raise HTTPException(400, str(e)) from None
        return GRAPH_HTML

    @api.get("/api/graphs")
    def graphs_json():
        return {"graphs": [summary(s, p) for s, p in list_graph_files(g.root).items()], "can_run": lm is not None}

    @api.get("/api/graph/{slug}")
    def graph_json(slug: str):
        return g.annotated(slug)

    @api.post("/api/graph/{slug}/state")
    def graph_state(slug: str, req: StateRequest):
        return {"qParams": save_state(g.path(slug), req.pinnedIds, req.supernodes)}

    @api.post("/api/graph/{slug}/intervene")
    def graph_intervene(slug: str, req: InterveneRequest):
        return g.intervene(slug, req)

    @api.post("/api/graphs/compute", status_code=202)
    def graph_compute(req: ComputeRequest):
        return {"job": g.start_compute(req).id}

    return g
