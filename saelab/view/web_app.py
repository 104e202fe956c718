"""`saelab serve`: a local web app over one or more SAE folders (FastAPI + uvicorn, 127.0.0.1).

Routes
  GET  /                                 the app page (search, fire-on-text, steering playground)
  GET  /api/saes                         served SAEs
  GET  /api/search?sae=&q=&by=text|token features by explanation words or by token
  GET  /sae/{name}/feature/{i}           a feature's dashboard page (HTML)
  GET  /api/sae/{name}/feature/{i}       the same as JSON
  POST /api/fire {sae, text}             per token, the features that fire most
  POST /api/steer {sae, prompt, edits,..} starts a steering job -> {"job": id} (202)
  GET  /api/jobs/{id}                    progress (tokens done / total) and, when done, both outputs

Why it stays responsive: generations run in a worker thread and take the model's lock only for
one forward at a time, so searches never wait and a fire-on-text request waits at most one token.
No route reads files: every page is built from in-memory stores, so no URL reaches the disk.
Bad input -> 4xx with a one-line `detail`; an unexpected failure -> 500 without a traceback.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from .feature_store import FeatureStore
from .render import feature_page
from ..errors import UserError
from ..models import collect_activations
from ..features.steer import FeatureEdit, encode_prompt
from ..features.steering import SteeringRequest, run_steering, sink_positions
from .app_page import APP_HTML

MAX_TEXT_CHARS = 4000
MAX_FIRE_TOKENS = 256
MAX_NEW_TOKENS = 200
MAX_JOBS = 64


class FireRequest(BaseModel):
    sae: str
    text: str = Field(max_length=MAX_TEXT_CHARS)
    top: int = Field(5, ge=1, le=20)


class EditModel(BaseModel):
    latent: int
    op: str = Field("clamp", pattern="^(clamp|add)$")
    value: float
    relative: bool = False


class SteerRequest(BaseModel):
    sae: str
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    edits: list[EditModel] = Field(min_length=1, max_length=16)
    max_new_tokens: int = Field(30, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    seed: int = 0


@dataclass
class Job:
    id: str
    status: str = "queued"   # queued | running | done | error
    done: int = 0
    total: int = 0
    result: dict | None = None
    error: str | None = None
    started: float = 0.0


class App:
    """The stores, one lock per model (forwards on one model never overlap: hooks are per module)."""

    def __init__(self, stores: list[FeatureStore]):
        self.stores = {s.name: s for s in stores}
        self.locks: dict[int, threading.Lock] = {id(s.model): threading.Lock() for s in stores}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="saelab-job")
        self.jobs: OrderedDict[str, Job] = OrderedDict()
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
    def fire(self, s: FeatureStore, text: str, top: int) -> dict:
        ids = encode_prompt(s.tok, text, max_tokens=MAX_FIRE_TOKENS)
        hp = s.sae.cfg.hookpoint
        with self.lock(s):
            act = collect_activations(s.model, ids, [hp])[hp][0]  # [T, d_in]
        dense = s.sae.encode_raw(act).to_dense()  # [T, d_sae]
        skip = self.skip_first(s)
        vals, idx = dense.topk(min(top, s.d_sae), dim=1)
        toks = []
        for p in range(skip, ids.shape[1]):
            feats = [{"id": int(j), "act": float(v), "explanation": s.explanation(int(j))}
                     for v, j in zip(vals[p], idx[p]) if v > 0]
            toks.append({"token": s.token_str(int(ids[0, p])), "features": feats})
        return {"tokens": toks}

    # ------------------------------------------------------------ steering jobs
    def start_steer(self, req: SteerRequest) -> Job:
        s = self.store(req.sae)
        steering = SteeringRequest([req.prompt], [FeatureEdit(e.latent, e.op, e.value, e.relative) for e in req.edits],
                                   max_new_tokens=req.max_new_tokens, temperature=req.temperature, seed=req.seed)
        steering.check()
        steering.check_sae(s.sae)
        encode_prompt(s.tok, req.prompt)  # too long / empty prompts fail now, as a 4xx
        job = Job(id=str(next(self.ids)), total=2 * req.max_new_tokens)
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS:
            self.jobs.popitem(last=False)

        def run():
            job.status, job.started = "running", time.time()
            try:
                def progress(done, total):
                    job.done, job.total = done, total

                (r,) = run_steering(steering, s.model, s.tok, s.sae, torch.from_numpy(s.max_act), self.skip_first(s),
                                    lock=self.lock(s), on_token=progress).results
                job.result = {"unsteered": r["unsteered"], "steered": r["steered"]}
                job.result["wall_s"] = time.time() - job.started
                job.done = job.total
                job.status = "done"
            except UserError as e:
                job.error, job.status = str(e), "error"
            except Exception as e:  # reported to the page, not as a traceback
                job.error, job.status = f"generation failed: {type(e).__name__}", "error"

        self.pool.submit(run)
        return job


def create_app(stores: list[FeatureStore]) -> FastAPI:
    state = App(stores)
    api = FastAPI(title="saelab", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.saelab = state

    @api.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @api.get("/", response_class=HTMLResponse)
    async def home():
        return APP_HTML

    @api.get("/api/saes")
    async def saes():
        return [{"name": s.name, "d_sae": s.d_sae, "hookpoint": s.sae.cfg.hookpoint,
                 "n_explained": sum(1 for r in s.explanations.values() if r.get("explanation"))}
                for s in state.stores.values()]

    @api.get("/api/search")
    def search(sae: str, q: str = Query("", max_length=200), by: str = Query("text", pattern="^(text|token)$"),
               limit: int = Query(50, ge=1, le=500)):
        return {"results": state.store(sae).search(q, by, limit)}

    def _view(name: str, i: int) -> tuple[FeatureStore, dict]:
        s = state.store(name)
        if not 0 <= i < s.d_sae:
            raise HTTPException(404, f"feature {i} does not exist: {name} has features 0..{s.d_sae - 1}")
        return s, s.view(i)

    @api.get("/sae/{name}/feature/{i}", response_class=HTMLResponse)
    def feature_html(name: str, i: int):
        s, v = _view(name, i)
        from urllib.parse import quote

        return feature_page(v, link=lambda j: f"/sae/{quote(name, safe='')}/feature/{j}", home="/")

    @api.get("/api/sae/{name}/feature/{i}")
    def feature_json(name: str, i: int):
        _, v = _view(name, i)
        v = dict(v)
        for key in ("top",):
            v[key] = [e.__dict__ for e in v[key]]
        v["ranges"] = [{**r, "examples": [e.__dict__ for e in r["examples"]]} for r in v["ranges"]]
        return v

    @api.post("/api/fire")
    def fire(req: FireRequest):
        return state.fire(state.store(req.sae), req.text, req.top)

    @api.post("/api/steer", status_code=202)
    def steer(req: SteerRequest):
        return {"job": state.start_steer(req).id}

    @api.get("/api/jobs/{job_id}")
    async def job(job_id: str):
        j = state.jobs.get(job_id)
        if j is None:
            raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for the last {MAX_JOBS})")
        return {"id": j.id, "status": j.status, "done": j.done, "total": j.total, "result": j.result, "error": j.error}

    return api


def serve(stores: list[FeatureStore], host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(create_app(stores), host=host, port=port, log_level="info")
