"""The OpenAI-compatible HTTP client against a real server on loopback: `saelab serve-llm` started
as a subprocess, serving the tiny random chat model. No mocks: answers must equal the in-process
client's, and failures (unreachable server, prompt too long, malformed body) must come back as
recorded failures, not exceptions."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import make_chat_model


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_model_dir, embedded_folder):
    """512 positions, so that a 600-word prompt is too long."""
    return make_chat_model(tmp_path_factory, tiny_model_dir, embedded_folder, 512)


@pytest.fixture(scope="module")
def server(chat_model_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saelab.cli",
            "serve-llm",
            "--model",
            str(chat_model_dir),
            "--port",
            "0",
            "--threads",
            "1",
            "--batch-size",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = None
    for _ in range(200):
        line = p.stdout.readline()
        if not line:
            break
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if m:
            url = m.group(1)
            break
    assert url, "serve-llm did not start"
    yield url
    p.terminate()
    p.wait(timeout=30)


@pytest.fixture(scope="module")
def local(chat_model_dir):
    from saelab.interpret.clients import LocalClient

    return LocalClient(str(chat_model_dir))


def _prompts(n):
    from saelab.interpret.prompts import judge_messages

    texts = ["the cat sat on the mat", "x = 1 + 2", "a dog barked", "import os", "rain fell all day", "def f(): pass"]
    return [judge_messages("detection", "animals", texts[i % len(texts)]) for i in range(n)]


def _post(url, body: bytes):
    req = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_generation_match_local(server, local):
    from saelab.interpret.clients import OpenAIClient

    with urllib.request.urlopen(server + "/models", timeout=30) as r:
        models = json.loads(r.read())
    mid = models["data"][0]["id"]
    c = OpenAIClient(model=mid, base_url=server, concurrency=3)
    prompts = _prompts(6)
    remote = c.generate(prompts, max_tokens=5)
    here = local.generate(prompts, max_tokens=5)
    assert [r.text for r in remote] == [h.text for h in here]
    assert [r.prompt_tokens for r in remote] == [h.prompt_tokens for h in here]
    assert c.usage.calls == 6 and c.usage.prompt_tokens == sum(h.prompt_tokens for h in here)


def test_logprobs_match_local(server, local):
    from saelab.interpret.clients import OpenAIClient

    c = OpenAIClient(model="x", base_url=server, concurrency=4)
    prompts = _prompts(4)
    top = local.top_logprobs(prompts, 20)
    code, raw = _post(
        server,
        json.dumps(
            {"model": "x", "messages": prompts[0], "max_tokens": 1, "logprobs": True, "top_logprobs": 5}
        ).encode(),
    )
    assert code == 200
    got = [(t["token"], t["logprob"]) for t in raw["choices"][0]["logprobs"]["content"][0]["top_logprobs"]]
    assert [t for t, _ in got] == [t for t, _ in top[0][:5]]
    assert [v for _, v in got] == pytest.approx([v for _, v in top[0][:5]], abs=1e-4)
    # choice log-probabilities over two tokens that are in every prompt's top 20
    common = set(t for t, _ in top[0])
    for t in top[1:]:
        common &= set(t2 for t2, _ in t)
    a, b = sorted(common)[:2]
    lps = c.choice_logprobs(prompts, {"a": [a], "b": [b]})
    for lp, t in zip(lps, top):
        table = dict(t)
        assert lp["a"] == pytest.approx(table[a], abs=1e-4) and lp["b"] == pytest.approx(table[b], abs=1e-4)


def test_failures_are_recorded_not_raised(server):
    from saelab.interpret.clients import OpenAIClient

    c = OpenAIClient(model="x", base_url=server, max_retries=3, backoff=0.01)
    long = [{"role": "user", "content": "word " * 600}]
    r = c.generate([long], max_tokens=4)[0]
    assert r.error and "maximum context length" in r.error and c.usage.retries == 0  # a 400 is not retried
    assert c.choice_logprobs([long])[0] is None
    assert c.usage.failures == 2
    code, body = _post(server, b"{not json")
    assert code == 400 and "not valid JSON" in body["error"]["message"]
    code, body = _post(server, json.dumps({"messages": []}).encode())
    assert code == 400 and "messages" in body["error"]["message"]
    # an unreachable server: retried with backoff, then recorded as a failure
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAIClient(model="x", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff=0.01, timeout=5)
    r = dead.generate(_prompts(1), max_tokens=3)[0]
    assert r.text is None and "gave up after 3 tries" in r.error
    assert dead.usage.retries == 2 and dead.usage.failures == 1


def test_anthropic_client_needs_a_key(monkeypatch):
    """The Anthropic path is real code but cannot run here without a key: it must say so clearly."""
    from saelab.errors import UserError
    from saelab.interpret.clients import make_client

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("SAELAB_LLM_MODEL", raising=False)
    with pytest.raises(UserError, match="needs a model: pass --llm"):  # no default that a provider can retire
        make_client("anthropic")
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        make_client("anthropic", model="some-model")
    with pytest.raises(UserError, match="unknown --client"):
        make_client("carrier-pigeon")


def test_rate_limit_is_retried_with_backoff():
    """A loopback server that answers 429 twice, then a completion: the client retries and succeeds;
    one that always answers 429 ends in a recorded failure after the retries."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from saelab.interpret.clients import OpenAIClient

    hits = {"n": 0}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits["n"] += 1
            if hits["n"] <= 2 or self.path.startswith("/always"):
                code, body = 429, {"error": {"message": "slow down", "type": "rate_limit_error"}}
            else:
                code, body = (
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "[1, 0]"}}
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                    },
                )
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        c = OpenAIClient(
            model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=3, backoff=0.01, price_in=1.0, price_out=2.0
        )
        r = c.generate(_prompts(1), max_tokens=5)[0]
        assert r.ok and r.text == "[1, 0]" and c.usage.retries == 2
        assert c.usage.cost_usd == pytest.approx((7 * 1.0 + 3 * 2.0) / 1e6)
        c2 = OpenAIClient(model="m", base_url=f"http://127.0.0.1:{port}/always", max_retries=2, backoff=0.01)
        r2 = c2.generate(_prompts(1), max_tokens=5)[0]
        assert r2.text is None and "RateLimitError" in r2.error and c2.usage.failures == 1
    finally:
        srv.shutdown()
