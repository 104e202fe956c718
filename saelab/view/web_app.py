"""`saelab serve`: a local web app over one or more SAE folders (FastAPI + uvicorn, 127.0.0.1).

Routes
  GET  /                                 the app page (search, fire-on-text, steering playground)
  GET  /api/saes                         served SAEs
  GET  /api/search?sae=&q=&by=text|token&offset=&limit=  one page of features by id, explanation words or
                                         token (an empty q: by score, then density) and the total
  GET  /sae/{name}/feature/{i}           a feature's dashboard page (HTML)
  GET  /api/sae/{name}/feature/{i}       the same as JSON
  POST /api/fire {sae, text}             per token, the features that fire most
  POST /api/steer {sae, prompt, edits, strengths,..}  starts a steering job -> {"job": id} (202);
                                         429 when MAX_PENDING jobs are already queued or running
  GET  /api/jobs/{id}                    progress (generation i of n, token k of max) and, when done,
                                         the unsteered text and one steered text per strength
  POST /api/jobs/{id}/cancel             stops a queued or running job (status "cancelled")
  /graphs, /graph/{slug}, /api/graph...  with `graphs`: the attribution-graph pages (graph_routes.py); their
                                         graph jobs share the steering jobs' queue and bound (App.submit)

Why it stays responsive: generations run in a worker thread and take the model's lock only for
one forward at a time, so searches never wait and a fire-on-text request waits at most one token.
No route reads files: every page is built from in-memory stores, so no URL reaches the disk.
Bad input -> 4xx with a one-line `detail`: a body over MAX_BODY_BYTES is refused (413) from its
Content-Length before it is read (a chunked body is cut off at the limit); an unexpected failure
-> 500 without a traceback. Jobs are kept until fetched once finished (then the oldest fetched go
first beyond MAX_JOBS).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ..errors import UserError
from ..features.steer import Cancelled, FeatureEdit, encode_prompt
from ..features.steering import MAX_STRENGTHS, SteeringRequest, run_steering, sink_positions
from ..models import collect_activations
from .app_page import APP_HTML
from .feature_search import MAX_LIMIT, search_page
from .feature_store import FeatureStore
from .json_guard import guard_json
from .render import feature_page
from .request_errors import add_error_handlers

MAX_TEXT_CHARS = 4000
MAX_FIRE_TOKENS = 256
MAX_NEW_TOKENS = 200
MAX_JOBS = 64  # finished jobs kept (unfetched ones are dropped last)
MAX_PENDING = 4  # queued + running steering jobs; one more -> 429
MAX_BODY_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self):
        super().__init__(413, f"request body over {MAX_BODY_BYTES} bytes")


def limit_body(app, limit: int = MAX_BODY_BYTES):
    """ASGI wrapper: 413 from Content-Length before any byte of the body is read; a body without one
    (chunked) raises BodyTooLarge (-> 413) once it passes `limit`."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            body = b'{"detail":"request body over %d bytes"}' % limit
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            return await send({"type": "http.response.body", "body": body})
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
            return msg

        return await app(scope, counted, send)

    return wrapped


class FireRequest(BaseModel):
    sae: str
    text: str = Field(max_length=MAX_TEXT_CHARS)
    top: int = Field(5, ge=1, le=20)
    feature: int | None = Field(None, ge=0)  # also this feature's activation at every token


class EditModel(BaseModel):
    latent: int = Field(ge=0)
    op: str = Field("clamp", pattern="^(clamp|add)$")
    value: float = Field(allow_inf_nan=False)
    relative: bool = False


class SteerRequest(BaseModel):
    sae: str
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    edits: list[EditModel] = Field(min_length=1, max_length=16)
    max_new_tokens: int = Field(30, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    strengths: list[float] = Field([1.0], min_length=1, max_length=MAX_STRENGTHS)


@dataclass
class Job:
    id: str
    status: str = "queued"  # queued | running | done | error | cancelled
    generation: int = 0  # generations finished (the unsteered one and one per strength)
    generations: int = 0
    tokens: int = 0  # tokens of the generation in progress
    max_tokens: int = 0
    result: dict | None = None
    error: str | None = None
    started: float = 0.0
    fetched: bool = False  # the finished state was read once
    cancel: threading.Event = field(default_factory=threading.Event)
    kind: str = "steer"  # steer | graph (view/graph_routes.py: compute an attribution graph)
    message: str = ""  # a graph job's progress in words

    @property
    def finished(self) -> bool:
        return self.status in ("done", "error", "cancelled")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "generation": self.generation,
            "generations": self.generations,
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "result": self.result,
            "error": self.error,
            "kind": self.kind,
            "message": self.message,
        }


class App:
    """The stores, one lock per model (forwards on one model never overlap: hooks are per module)."""

    def __init__(self, stores: list[FeatureStore]):
        self.stores = {s.name: s for s in stores}
        self.locks: dict[int, threading.Lock] = {id(s.model): threading.Lock() for s in stores}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="saelab-job")
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.jobs_lock = threading.Lock()
        self.ids = itertools.count(1)

    def store(self, name: str) -> FeatureStore:
        s = self.stores.get(name)
        if s is None:
            raise HTTPException(404, f"unknown SAE {name!r}; served: {sorted(self.stores)}")
        return s

    def lock(self, s: FeatureStore) -> threading.Lock:
        return self.locks[id(s.model)]

    def skip_first(self, s: FeatureStore) -> int:
        return sink_positions(s.cfg_json)

    # ------------------------------------------------------------ fire
    @torch.no_grad()
    def fire(self, s: FeatureStore, text: str, top: int, feature: int | None = None) -> dict:
        ids = encode_prompt(s.tok, text, max_tokens=MAX_FIRE_TOKENS)
        with self.lock(s):
            acts = collect_activations(s.model, ids, s.sites)  # {site: [1, T, d_in]} (a CLT: every layer's)
        dense = s.dense_acts(acts)  # [T, d_sae]
        skip = self.skip_first(s)
        vals, idx = dense.topk(min(top, s.d_sae), dim=1)
        toks = []
        for p in range(skip, ids.shape[1]):
            feats = [
                {"id": int(j), "act": float(v), "explanation": s.explanation(int(j))}
                for v, j in zip(vals[p], idx[p])
                if v > 0
            ]
            tok = {"token": s.token_str(int(ids[0, p])), "features": feats}
            if feature is not None:
                tok["act"] = float(dense[p, s.check_latent(feature)])
            toks.append(tok)
        return {"tokens": toks, "max_act": float(s.max_act[feature]) if feature is not None else None}

    # ------------------------------------------------------------ steering jobs
    def start_steer(self, req: SteerRequest) -> Job:
        s = self.store(req.sae)
        steering = SteeringRequest(
            [req.prompt],
            [FeatureEdit(e.latent, e.op, e.value, e.relative) for e in req.edits],
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            seed=req.seed,
            strengths=req.strengths,
        )
        steering.check()
        steering.check_sae(s.sae)
        encode_prompt(s.tok, req.prompt)  # too long / empty prompts fail now, as a 4xx

        def work(job: Job) -> dict:
            def progress(gen, n, k, m):
                job.generation, job.tokens = gen, k

            (r,) = run_steering(
                steering,
                s.model,
                s.tok,
                s.sae,
                torch.from_numpy(s.max_act),
                self.skip_first(s),
                lock=self.lock(s),
                on_token=progress,
                cancel=job.cancel,
            ).results
            return r

        return self.submit(work, generations=1 + len(req.strengths), max_tokens=req.max_new_tokens)

    def submit(self, work, **fields) -> Job:
        """The one job queue (steering and graph jobs): 429 beyond MAX_PENDING queued or running; a Job with
        `fields`, then `work(job)` runs in the pool, sets progress on `job`, returns the result dict, and
        stops with Cancelled when `job.cancel` is set; a UserError is shown as it is, anything else by type."""
        with self.jobs_lock:
            pending = sum(1 for j in self.jobs.values() if not j.finished)
            if pending >= MAX_PENDING:
                raise HTTPException(
                    429, f"{pending} jobs are already queued or running; wait for one to finish or cancel one"
                )
            job = Job(id=str(next(self.ids)), **fields)
            self.jobs[job.id] = job
            self._prune()

        def run():
            if job.cancel.is_set():
                job.status = "cancelled"
                return
            job.status, job.started = "running", time.time()
            try:
                r = work(job)
                job.result = {**r, "wall_s": time.time() - job.started}
                job.generation, job.status = job.generations, "done"
            except Cancelled:
                job.status = "cancelled"
            except UserError as e:
                job.error, job.status = str(e), "error"
            except Exception as e:  # reported to the page, not as a traceback
                job.error, job.status = f"{job.kind} job failed: {type(e).__name__}", "error"

        self.pool.submit(run)
        return job

    def _prune(self) -> None:
        """Keep at most MAX_JOBS finished jobs: the oldest already fetched go first, unfetched ones last."""
        done = [j for j in self.jobs.values() if j.finished]
        extra = len(done) - MAX_JOBS
        for j in sorted(done, key=lambda j: not j.fetched)[: max(0, extra)]:
            del self.jobs[j.id]


def create_app(stores: list[FeatureStore], graphs=None, replacement=None, lm=None) -> FastAPI:
    """The app over `stores`; with `graphs` (a folder) also the graph pages (view/graph_routes.py), which
    compute graphs and run interventions with `replacement` and its loaded model `lm`."""
    state = App(stores)
    api = FastAPI(title="saelab", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.saelab = state
    api.add_middleware(guard_json)  # inside limit_body: NaN / Infinity / too deep -> 400
    api.add_middleware(limit_body)

    add_error_handlers(api)  # one-line details: a bad feature id is a sentence, not pydantic's list

    @api.get("/", response_class=HTMLResponse)
    async def home():
        return APP_HTML

    @api.get("/api/saes")
    async def saes():
        return [
            {
                "name": s.name,
                "d_sae": s.d_sae,
                "hookpoint": s.site_label,
                "n_explained": sum(1 for r in s.explanations.values() if r.explanation),
            }
            for s in state.stores.values()
        ]

    @api.get("/api/search")
    def search(
        sae: str,
        q: str = Query("", max_length=200),
        by: str = Query("text", pattern="^(text|token)$"),
        limit: int = Query(50, ge=1, le=MAX_LIMIT),
        offset: int = Query(0, ge=0, le=10**9),
    ):
        return search_page(state.store(sae), q, by, offset, limit)

    def _view(name: str, i: int) -> tuple[FeatureStore, dict]:
        s = state.store(name)
        if not 0 <= i < s.d_sae:
            raise HTTPException(404, f"feature {i} does not exist: {name} has features 0..{s.d_sae - 1}")
        return s, s.view(i)

    @api.get("/sae/{name}/feature/{i}", response_class=HTMLResponse)
    def feature_html(name: str, i: int):
        s, v = _view(name, i)
        from urllib.parse import quote

        return feature_page(v, link=lambda j: f"/sae/{quote(name, safe='')}/feature/{j}", home="/", live=True)

    @api.get("/api/sae/{name}/feature/{i}")
    def feature_json(name: str, i: int):
        _, v = _view(name, i)
        v = dict(v)
        for key in ("top",):
            v[key] = [e.__dict__ for e in v[key]]
        v["ranges"] = [{**r, "examples": [e.__dict__ for e in r["examples"]]} for r in v["ranges"]]
        v["example_sets"] = [{**r, "examples": [e.__dict__ for e in r["examples"]]} for r in v["example_sets"]]
        return v

    @api.post("/api/fire")
    def fire(req: FireRequest):
        return state.fire(state.store(req.sae), req.text, req.top, req.feature)

    @api.post("/api/steer", status_code=202)
    def steer(req: SteerRequest):
        return {"job": state.start_steer(req).id}

    def _job(job_id: str) -> Job:
        j = state.jobs.get(job_id)
        if j is None:
            raise HTTPException(
                404, f"no job {job_id!r} (finished jobs are kept until fetched, then the last {MAX_JOBS})"
            )
        return j

    @api.get("/api/jobs/{job_id}")
    async def job(job_id: str):
        j = _job(job_id)
        out = j.to_dict()
        j.fetched = j.fetched or j.finished
        return out

    @api.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        j = _job(job_id)
        j.cancel.set()
        return {"id": j.id, "status": j.status}

    if graphs is not None:
        from .graph_routes import add_graph_routes

        add_graph_routes(api, state, graphs, replacement, lm)
    return api


def serve(stores: list[FeatureStore], host: str = "127.0.0.1", port: int = 8765, **graph_opts) -> None:
    import uvicorn

    uvicorn.run(create_app(stores, **graph_opts), host=host, port=port, log_level="info")
