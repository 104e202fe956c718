"""The Anthropic client against a loopback server that speaks the Messages API (POST /v1/messages),
the installed `anthropic` SDK pointed at it with base_url, as test_interpret_http.py tests the
OpenAI-compatible path against `saelab serve-llm`. The server checks requests as the API does (the
key, as x-api-key or bearer, and the version header; known fields only; a string system prompt;
alternating turns) and answers a reply derived from the prompt, so a test can tell which explanation
came from which request.

And --resume across an upgrade: the checkpoint's fingerprint leaves options at their default out."""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import make_chat_model, train_cfg
from test_train import RESUME_KW, _interrupted  # one way to stop a run after its first checkpoint

from saelab.errors import UserError
from saelab.storage import read_json

KEY = "sk-loopback-test"
CTX = 64
PREFILL_REFUSED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)


def _sdk_fields() -> set[str]:
    """The request fields this server knows: what the API takes that saelab may send (temperature only
    where the installed SDK still has it, as the API it mirrors)."""
    import anthropic

    known = {"model", "messages", "max_tokens", "system", "stop_sequences", "metadata", "stream"}
    if "temperature" in inspect.signature(anthropic.Anthropic(api_key="x").messages.create).parameters:
        known.add("temperature")
    return known


def _reply_for(body: dict) -> str:
    """A phrase naming the request: the hash of its first user turn."""
    first = body["messages"][0]["content"]
    return "marks of " + hashlib.sha256(first.encode()).hexdigest()[:8]


class MessagesAPI:
    """A Messages API on 127.0.0.1. The first part of the path picks a behaviour: /ok answers every valid
    request; /noprefill refuses a conversation ending in an assistant turn (400, as newer models do);
    /busy answers 529 overloaded twice, then as /ok; /retired answers 404 for every model."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []  # (mode, headers, body)
        self.replies: dict[str, str] = {}  # the request's first user turn -> the text answered
        self.busy = 0
        self.lock = threading.Lock()
        known, api = _sdk_fields(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, kind: str, message: str):
                self._send(code, {"type": "error", "error": {"type": kind, "message": message}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode, _, rest = self.path.lstrip("/").partition("/")
                if rest != "v1/messages":
                    return self._error(404, "not_found_error", f"no route {self.path}")
                key = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
                if key != KEY or not self.headers.get("anthropic-version"):  # SDK 2.x sends the key as a bearer token
                    return self._error(401, "authentication_error", "invalid API key or no anthropic-version")
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._error(400, "invalid_request_error", "body is not valid JSON")
                with api.lock:
                    api.requests.append((mode, dict(self.headers), body))
                extra = sorted(set(body) - known)
                if extra:
                    return self._error(400, "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted")
                if "system" in body and not (isinstance(body["system"], str) and body["system"]):
                    return self._error(400, "invalid_request_error", "system: Input should be a valid string")
                msgs = body.get("messages")
                if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1 or not msgs:
                    return self._error(400, "invalid_request_error", "max_tokens and messages are required")
                roles = [m["role"] for m in msgs]
                if roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:])):
                    return self._error(400, "invalid_request_error", "messages: roles must alternate from user")
                if mode == "retired":
                    return self._error(404, "not_found_error", f"model: {body['model']}")
                if mode == "busy" and api.busy < 2:
                    api.busy += 1
                    return self._error(529, "overloaded_error", "Overloaded")
                prefilled = roles[-1] == "assistant"
                if prefilled and mode == "noprefill":
                    return self._error(400, "invalid_request_error", PREFILL_REFUSED)
                phrase = _reply_for(body)
                api.replies[msgs[0]["content"]] = phrase
                text = " " + phrase if prefilled else f"[EXPLANATION]: {phrase}"
                words = sum(len(m["content"].split()) for m in msgs) + len(body.get("system", "").split())
                self._send(
                    200,
                    {
                        "id": "msg_loopback",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": words, "output_tokens": len(text.split())},
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    a = MessagesAPI()
    yield a
    a.server.shutdown()


def _prompts(n: int) -> list[list[dict]]:
    from saelab.interpret.prompts import judge_messages

    texts = ["the cat sat on the mat", "x = 1 + 2", "a dog barked", "import os"]
    return [judge_messages("detection", "animals", texts[i % len(texts)]) for i in range(n)]


def test_requests_are_ones_the_sdk_and_the_api_accept(api):
    """Every call of today's SDK (2.x: no `temperature` keyword) gets its reply: the system prompt as a
    string, none when there is no system turn, usage and cost counted from the reply."""
    from saelab.interpret.clients import make_client

    c = make_client("anthropic", model="claude-loopback", base_url=api.url + "/ok", price_in=3.0, price_out=15.0)
    prompts = _prompts(3) + [[{"role": "user", "content": "just a user turn"}]]
    out = c.generate(prompts, max_tokens=20, temperature=0.0)
    assert [r.error for r in out] == [None] * 4
    assert [r.text for r in out] == [f"[EXPLANATION]: {api.replies[p[-1]['content']]}" for p in prompts]
    bodies = [b for _, _, b in api.requests]
    assert len(bodies) == 4 and all(b["model"] == "claude-loopback" and b["max_tokens"] == 20 for b in bodies)
    systems = {b["messages"][0]["content"]: b.get("system") for b in bodies}
    assert systems["just a user turn"] is None  # left out, not sent as null
    assert all(systems[p[-1]["content"]] == p[0]["content"] for p in prompts[:3])
    assert ("temperature" in bodies[0]) == c.sends_temperature == ("temperature" in _sdk_fields())
    assert c.usage.calls == 4 and c.usage.failures == 0
    assert c.usage.prompt_tokens == sum(r.prompt_tokens for r in out) > 4 * 5
    assert c.usage.cost_usd == pytest.approx((c.usage.prompt_tokens * 3.0 + c.usage.completion_tokens * 15.0) / 1e6)
    assert c.describe() == {
        "client": "anthropic",
        "model": "claude-loopback",
        "base_url": api.url + "/ok",
        "temperature_sent": c.sends_temperature,
    }


def test_prefill_is_continued_or_dropped_where_the_model_refuses_it(api):
    from saelab.interpret.clients import make_client

    ok = make_client("anthropic", model="m", base_url=api.url + "/ok")
    r = ok.generate(_prompts(1), max_tokens=20, prefill="[EXPLANATION]:")[0]
    assert r.text == "[EXPLANATION]: " + api.replies[_prompts(1)[0][-1]["content"]]
    assert api.requests[0][2]["messages"][-1] == {"role": "assistant", "content": "[EXPLANATION]:"}
    # a model without prefill: the first request is sent again without it, later ones never carry it
    api.requests.clear()
    no = make_client("anthropic", model="m", base_url=api.url + "/noprefill", concurrency=1)
    out = no.generate(_prompts(3), max_tokens=20, prefill="[EXPLANATION]:")
    assert [r.error for r in out] == [None] * 3 and no.prefill_refused
    assert all(r.text.startswith("[EXPLANATION]: marks of ") for r in out)  # the model wrote the marker itself
    roles = [[m["role"] for m in b["messages"]][-1] for _, _, b in api.requests]
    assert roles == ["assistant", "user", "user", "user"] and no.usage.retries == 0


def test_overloaded_is_retried_and_a_retired_model_is_not(api):
    from saelab.interpret.clients import make_client

    c = make_client("anthropic", model="m", base_url=api.url + "/busy", max_retries=3)
    c.backoff = 0.01
    r = c.generate(_prompts(1), max_tokens=20)[0]
    assert r.ok and c.usage.retries == 2 and api.busy == 2
    gone = make_client("anthropic", model="claude-retired", base_url=api.url + "/retired", max_retries=3)
    r = gone.generate(_prompts(1), max_tokens=20)[0]
    assert r.text is None and "NotFoundError" in r.error and "claude-retired" in r.error
    assert gone.usage.retries == 0 and gone.usage.failures == 1


# ---------------------------------------------------------------- saelab explain --client anthropic


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model_dir, embedded_folder, text_corpus):
    """A latent cache of a random TopK SAE on the tiny chat model (as test_interpret.py builds it)."""
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache import LatentCache
    from saelab.features.latent_cache_writer import write_latent_cache
    from saelab.models import collect_activations, load_model
    from saelab.sae import SaeConfig, build_sae
    from saelab.sae.folder import Provenance, save_sae

    chat = make_chat_model(tmp_path_factory, tiny_model_dir, embedded_folder, 1024)
    lm = load_model(str(chat))
    ids = lm.tokenizer(text_corpus.read_text()[:4000], return_tensors="pt").input_ids[:, :256]
    x = collect_activations(lm.model, ids, ["model.layers.1"])["model.layers.1"][0]
    torch.manual_seed(1)
    sae = build_sae(SaeConfig(arch="topk", d_in=64, d_sae=48, hookpoint="model.layers.1", k=4))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.W_enc.copy_(torch.randn(64, 48) / x.std(0).mean())
    folder = tmp_path_factory.mktemp("sae") / "sae"
    save_sae(sae, folder, Provenance(model_spec=str(chat), model_name="tiny", corpus=str(text_corpus), context=CTX))
    cfg = LatentCacheConfig(sae_dirs=[str(folder)], tokens=CTX * 40, out=str(tmp_path_factory.mktemp("c") / "cache"))
    return LatentCache.open(write_latent_cache(cfg, progress=False))


def _explain_args(cache, run, base_url, model="claude-loopback") -> list[str]:
    name = cache.sae_names[0]
    lat = [str(int(j)) for j in np.argsort(-cache.fire_counts(name))[:3]]
    small = ["--window", "16", "--n-explain", "8", "--n-score-activating", "10", "--n-score-random", "5"]
    client = ["--client", "anthropic", "--llm", model, "--base-url", base_url, "--max-retries", "0"]
    return ["explain", str(cache.path), "--latents", *lat, *client, *small, "--n-score-hard", "5", "--out", str(run)]


def test_cli_explain_with_client_anthropic_gets_explanations(api, cache, tmp_path, capsys):
    """`saelab explain --client anthropic` against the Messages API: every latent explained, each
    explanation the phrase the server answered to that latent's prompt, usage in the manifest."""
    from saelab.cli import main
    from saelab.interpret.records import load_run

    run = tmp_path / "run"
    assert main(_explain_args(cache, run, api.url + "/noprefill")) == 0
    r = load_run(run)
    assert len(r.explanations) == 3 and all(rec["status"] == "ok" for rec in r.explanations.values())
    bodies = [b for _, _, b in api.requests if b["messages"][-1]["role"] == "user"]
    answered = {_reply_for(b) for b in bodies}
    assert {rec["explanation"] for rec in r.explanations.values()} == answered and len(answered) == 3
    usage = r.manifest["explain_usage"]
    assert usage["calls"] == 3 and usage["failures"] == 0
    assert usage["prompt_tokens"] == sum(rec["prompt_tokens"] for rec in r.explanations.values()) > 3 * 50
    assert r.manifest["explainer"]["client"] == "anthropic" and r.manifest["explainer"]["model"] == "claude-loopback"
    # a model the server no longer serves: every latent fails, and the run says so in one line (exit 2)
    capsys.readouterr()
    assert main(_explain_args(cache, tmp_path / "gone", api.url + "/retired", "claude-retired")) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("saelab: error:")]
    assert len(err) == 1 and "explain: every latent failed (3 of 3" in err[0] and "claude-retired" in err[0]


# ---------------------------------------------------------------- --resume across an upgrade
def _as_older_saelab(run, hashed_options) -> None:
    """Rewrite the checkpoint's meta as a saelab that stored only the hash would have: `identity` over
    hashed_options(the options it had), no `resume_identity`."""
    from saelab.storage import fingerprint, read_tensors, write_tensors
    from saelab.train.checkpoint import CHECKPOINT, read_checkpoint_meta

    meta = read_checkpoint_meta(run)
    s = meta.pop("resume_identity")
    meta["identity"] = fingerprint(hashed_options(s["config"]), s["members"], s["data"], s["parallel"])
    write_tensors(run / CHECKPOINT, read_tensors(run / CHECKPOINT), {"saelab": json.dumps(meta)})


def _defaults_left_out(config: dict) -> dict:
    """The rule: the options that differ from their default (a field with no default always counts)."""
    import dataclasses

    from saelab.train.config import TrainConfig

    d = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    d |= {
        f.name: f.default_factory()
        for f in dataclasses.fields(TrainConfig)
        if f.default_factory is not dataclasses.MISSING
    }
    return {k: v for k, v in config.items() if k not in d or json.loads(json.dumps(d[k], default=str)) != v}


def test_resume_of_a_checkpoint_written_before_an_option_existed(
    tmp_path, tiny_model_dir, text_corpus, monkeypatch, capsys
):
    """A checkpoint holding only the hash, written by a saelab that lacked --sink-norm-factor: it resumes
    while that option is at its default (the hash leaves default options out), and is refused otherwise."""
    from saelab.train.loop import TrainingRun

    run = _interrupted(tmp_path, tiny_model_dir, text_corpus, monkeypatch, **RESUME_KW)
    lacking = lambda c: _defaults_left_out({k: v for k, v in c.items() if k != "sink_norm_factor"})  # noqa: E731
    _as_older_saelab(run, lacking)
    with pytest.raises(UserError, match="written by a different configuration"):
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, sink_norm_factor=4.0, **RESUME_KW)).run()
    with pytest.raises(UserError, match="written by a different configuration"):  # a recorded option changed
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, lr=[1e-3], **RESUME_KW)).run()
    capsys.readouterr()
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, **RESUME_KW)).run()
    assert "resuming at 2,048 tokens" in capsys.readouterr().out
    assert read_json(run / "manifest.json")["lm_tokens"] == 8192


def test_resume_of_a_checkpoint_whose_hash_covers_every_option(
    tmp_path, tiny_model_dir, text_corpus, monkeypatch, capsys
):
    """What saelab wrote before the rule (a hash over every option) still resumes when no option was added."""
    from saelab.train.loop import TrainingRun

    run = _interrupted(tmp_path, tiny_model_dir, text_corpus, monkeypatch, **RESUME_KW)
    _as_older_saelab(run, lambda c: c)
    with pytest.raises(UserError, match="written by a different configuration"):
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, k=[16], **RESUME_KW)).run()
    capsys.readouterr()
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, **RESUME_KW)).run()
    assert "resuming at 2,048 tokens" in capsys.readouterr().out


def test_identity_hash_leaves_default_options_out():
    """The stored hash does not move when an option at its default appears or disappears, and does when
    a value differs; the dict beside it keeps every option (so --resume can name each difference)."""
    from saelab.train.config import TrainConfig
    from saelab.train.resume_identity import identity_hash, resume_identity

    h, stored = resume_identity(TrainConfig(out="o", k=[8], hookpoints=["a"]), ["a-topk"], "data", {})
    assert stored["config"]["sink_norm_factor"] == 5.0 and "buffer_batches" in stored["config"]
    older = json.loads(json.dumps(stored))
    del older["config"]["sink_norm_factor"]
    assert identity_hash(older, TrainConfig) == h
    h4, _ = resume_identity(TrainConfig(out="o", k=[8], hookpoints=["a"], sink_norm_factor=4.0), ["a-topk"], "data", {})
    h16, _ = resume_identity(TrainConfig(out="o", k=[16], hookpoints=["a"]), ["a-topk"], "data", {})
    assert len({h, h4, h16}) == 3
