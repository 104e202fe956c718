"""`saelab serve-llm`: an OpenAI-compatible chat server for a local Hugging Face model.

Why: it lets any OpenAI client (ours included) use the embedded model, and it is the real server
the HTTP client is tested against. Standard library only (http.server), bound to loopback by
default.

Endpoints:
  GET  /v1/models                 the one served model
  POST /v1/chat/completions       {model, messages, max_tokens, temperature, logprobs, top_logprobs}
                                  -> OpenAI's chat.completion object with usage; with `logprobs`
                                  the first generated token carries its top_logprobs
  GET  /health                    {"status": "ok"}

Concurrent requests are queued and run in batches (up to --batch-size prompts per forward pass):
a worker thread collects what arrived within --batch-wait seconds and groups it by request kind.
Errors come back as OpenAI-style JSON ({"error": {"message", "type"}}) with 400 for a bad request
(malformed JSON, no messages, a prompt longer than the model's context) and 500 otherwise.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .local_client import LocalClient


class BadRequest(Exception):
    pass


class _Batcher:
    """Runs queued requests in batches on one worker thread."""

    def __init__(self, client: LocalClient, batch_size: int, wait: float):
        self.client, self.batch_size, self.wait = client, batch_size, wait
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, key: tuple, messages) -> Future:
        f: Future = Future()
        self.q.put((key, messages, f))
        return f

    def _loop(self):
        while True:
            items = [self.q.get()]
            deadline = time.time() + self.wait
            while len(items) < self.batch_size:
                try:
                    items.append(self.q.get(timeout=max(0.0, deadline - time.time())))
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for it in items:
                groups.setdefault(it[0], []).append(it)
            for key, group in groups.items():
                try:
                    results = self._run(key, [m for _, m, _ in group])
                    for (_, _, f), r in zip(group, results):
                        f.set_result(r)
                except Exception as e:  # a failed batch fails its requests, never the server
                    for _, _, f in group:
                        f.set_exception(e)

    def _run(self, key, prompts):
        kind, max_tokens, temperature, k = key
        if kind == "top":
            return self.client.top_logprobs(prompts, k)
        return self.client.generate(prompts, max_tokens=max_tokens, temperature=temperature)


def make_handler(client: LocalClient, batcher: _Batcher, model_id: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request would flood long runs
            pass

        def _send(self, code: int, obj: dict):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str, typ: str = "invalid_request_error"):
            self._send(code, {"error": {"message": message, "type": typ, "code": None}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "saelab"}]})
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}")
                return
            try:
                n = int(self.headers.get("Content-Length", 0))
                try:
                    req = json.loads(self.rfile.read(n) or b"{}")
                except json.JSONDecodeError as e:
                    raise BadRequest(f"body is not valid JSON: {e}")
                self._send(200, self._complete(req))
            except BadRequest as e:
                self._error(400, str(e))
            except Exception as e:
                self._error(500, f"{type(e).__name__}: {e}", "server_error")

        def _complete(self, req: dict) -> dict:
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "content" in m for m in msgs):
                raise BadRequest("`messages` must be a non-empty list of {role, content}")
            if req.get("n", 1) != 1:
                raise BadRequest("only n=1 is supported")
            max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 256)
            temperature = float(req.get("temperature") or 0.0)
            want_lp = bool(req.get("logprobs"))
            k = int(req.get("top_logprobs") or 1)
            pt = client.prompt_tokens(msgs)
            if pt + max_tokens > client.max_context:
                raise BadRequest(f"This model's maximum context length is {client.max_context} tokens; the prompt has "
                                 f"{pt} tokens and max_tokens is {max_tokens} (context_length_exceeded)")
            logprobs = None
            if want_lp:
                top = batcher.submit(("top", 1, 0.0, max(1, min(k, 20))), msgs).result()
                first = top[0]
                logprobs = {"content": [{"token": first[0], "logprob": first[1], "bytes": list(first[0].encode()),
                                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                                          for t, v in top]}]}
            if want_lp and max_tokens == 1:
                text, ct, finish = top[0][0], 1, "length"
            else:
                c = batcher.submit(("gen", max_tokens, temperature, 0), msgs).result()
                if c.error and c.text is None:
                    raise BadRequest(c.error)
                text, ct = c.text or "", c.completion_tokens
                finish = "length" if ct >= max_tokens else "stop"
            return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                    "model": model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": logprobs, "finish_reason": finish}],
                    "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}

    return Handler


def make_server(model: str = "embedded", host: str = "127.0.0.1", port: int = 8000, batch_size: int = 8,
                batch_wait: float = 0.01, client: LocalClient | None = None) -> ThreadingHTTPServer:
    client = client or LocalClient(model, batch_size=batch_size)
    batcher = _Batcher(client, batch_size, batch_wait)
    model_id = client.lm.name
    server = ThreadingHTTPServer((host, port), make_handler(client, batcher, model_id))
    server.daemon_threads = True
    server.model_id = model_id  # type: ignore[attr-defined]
    return server


def serve(model: str = "embedded", host: str = "127.0.0.1", port: int = 8000, batch_size: int = 8,
          batch_wait: float = 0.01) -> None:
    server = make_server(model, host, port, batch_size, batch_wait)
    h, p = server.server_address[:2]
    print(f"saelab: serving {server.model_id} (OpenAI-compatible) at http://{h}:{p}/v1  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
