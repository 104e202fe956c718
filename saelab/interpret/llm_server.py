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
(malformed JSON, a body that is not an object, no messages, a content that is not text, max_tokens /
temperature / top_logprobs of the wrong type or range, max_tokens over the server's cap
--max-tokens-cap, a prompt longer than the model's context), 413 for a body over --max-body bytes
(refused from its Content-Length, before it is read), and 500 only for the server's own faults.
A request whose client disconnects is dropped from the queue, and a generation whose clients have
all gone stops at the next token.

Connections (issue 33): the listen backlog is BACKLOG (128, not http.server's 5, so a burst of clients
is queued, not reset); a connection that sends nothing for --request-timeout seconds (a held slow
client, an idle keep-alive) is closed, so it cannot hold a thread for ever; a client that goes away
mid-request (an aborted body, a reset, a broken pipe) is one quiet line on stderr, not a traceback;
JSON nested too deeply to parse (RecursionError) is a 400 like any other malformed body.
"""

from __future__ import annotations

import json
import math
import queue
import select
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import UserError
from ..option_checks import check_types, need_at_least
from ..options import model_option, opt, threads_option
from .local_client import LocalClient

BACKLOG = 128  # pending connections the kernel queues before refusing (http.server's default is 5)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLIENT_GONE = (ConnectionError, TimeoutError)  # BrokenPipe, ConnectionReset/Aborted, a socket timeout


class BadRequest(Exception):
    pass


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a real backlog and one quiet line (not a traceback) for a client that left."""

    request_queue_size = BACKLOG
    daemon_threads = True

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        if isinstance(err, CLIENT_GONE):
            host, port = client_address[:2]
            print(f"saelab: serve-llm: client {host}:{port} went away ({type(err).__name__})", file=sys.stderr)
        else:
            super().handle_error(request, client_address)


class _Batcher:
    """Runs queued requests in batches on one worker thread."""

    def __init__(self, client: LocalClient, batch_size: int, wait: float):
        self.client, self.batch_size, self.wait = client, batch_size, wait
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, key: tuple, messages, gone: threading.Event | None = None) -> Future:
        """`gone`: set when the client disconnects; the request is skipped or its generation stopped."""
        f: Future = Future()
        self.q.put((key, messages, f, gone or threading.Event()))
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
                if it[3].is_set():  # its client left while it waited
                    it[2].cancel()
                else:
                    groups.setdefault(it[0], []).append(it)
            for key, group in groups.items():
                try:
                    results = self._run(key, [m for _, m, _, _ in group], [g for _, _, _, g in group])
                    for (_, _, f, _), r in zip(group, results):
                        f.set_result(r)
                except Exception as e:  # a failed batch fails its requests, never the server
                    for _, _, f, _ in group:
                        f.set_exception(e)

    def _run(self, key, prompts, gone: list[threading.Event]):
        kind, max_tokens, temperature, k = key
        if kind == "top":
            return self.client.top_logprobs(prompts, k)
        return self.client.generate(
            prompts, max_tokens=max_tokens, temperature=temperature, stop=lambda: all(g.is_set() for g in gone)
        )


class ClientGone(Exception):
    pass


def _number(req: dict, key: str, kind, default, lo, hi):
    """req[key] as `kind` within [lo, hi] (None / absent: default), else BadRequest."""
    v = req.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (kind is int and v != int(v)):
        raise BadRequest(f"`{key}` must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if not lo <= v <= hi:
        raise BadRequest(f"`{key}` must be between {lo} and {hi}, got {v!r}")
    return kind(v)


def make_handler(
    client: LocalClient,
    batcher: _Batcher,
    model_id: str,
    max_tokens_cap: int = 1024,
    max_body: int = 1 << 20,
    request_timeout: float = 60.0,
):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # the socket's timeout: a read (request line, headers, body) or a write that waits longer raises,
        # and the connection is closed (waiting for the model is not a socket read, so it never times out)
        timeout = request_timeout

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
                n = self._body_length()
                if n > max_body:  # before reading it: a 100 MB body (or a fake length) costs nothing
                    self.close_connection = True
                    self._error(
                        413,
                        f"request body of {n:,} bytes is over this server's limit of {max_body:,} (--max-body)",
                        "request_too_large",
                    )
                    return
                data = self.rfile.read(n)
                if len(data) < n:  # the client stopped sending and closed: nobody to answer
                    raise ConnectionAbortedError(f"body cut off after {len(data)} of {n} bytes")
                try:
                    req = json.loads(data or b"{}")
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise BadRequest(f"body is not valid JSON: {e}") from e
                except RecursionError:
                    raise BadRequest("body is not valid JSON: nested too deeply") from None
                if not isinstance(req, dict):
                    raise BadRequest(f"body must be a JSON object, not {type(req).__name__}")
                self._send(200, self._complete(req))
            except BadRequest as e:
                self._error(400, str(e))
            except ClientGone:
                self.close_connection = True
            except CLIENT_GONE:
                self.close_connection = True
                raise  # the server's handle_error: one quiet line
            except Exception as e:
                self._error(500, f"{type(e).__name__}: {e}", "server_error")

        def _body_length(self) -> int:
            raw = self.headers.get("Content-Length")
            if raw is None:
                self.close_connection = True
                raise BadRequest("a Content-Length header is required")
            try:
                n = int(raw)
            except ValueError:
                n = -1
            if n < 0:
                self.close_connection = True
                raise BadRequest(f"Content-Length {raw!r} is not a byte count")
            return n

        def _client_gone(self) -> bool:
            """The client closed its connection (readable with nothing to read)."""
            try:
                if not select.select([self.connection], [], [], 0)[0]:
                    return False
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _wait(self, future: Future, gone: threading.Event):
            while True:
                try:
                    return future.result(timeout=0.2)
                except FutureTimeout:
                    if self._client_gone():
                        gone.set()  # dropped from the queue, or its generation stops at the next token
                        raise ClientGone() from None
                except CancelledError:
                    raise ClientGone() from None

        def _complete(self, req: dict) -> dict:
            msgs = req.get("messages")
            if (
                not isinstance(msgs, list)
                or not msgs
                or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role", "user"), str)
                    for m in msgs
                )
            ):
                raise BadRequest("`messages` must be a non-empty list of {role, content} with text content")
            if req.get("n", 1) != 1:
                raise BadRequest("only n=1 is supported")
            key = "max_tokens" if req.get("max_tokens") is not None else "max_completion_tokens"
            max_tokens = _number(req, key, int, min(256, max_tokens_cap), 1, 10**9)
            if max_tokens > max_tokens_cap:
                raise BadRequest(
                    f"`{key}` {max_tokens} is over this server's cap of {max_tokens_cap} (--max-tokens-cap)"
                )
            temperature = _number(req, "temperature", float, 0.0, 0.0, 2.0)
            if not isinstance(req.get("logprobs", False), (bool, type(None))):
                raise BadRequest(f"`logprobs` must be true or false, got {req['logprobs']!r}")
            want_lp = bool(req.get("logprobs"))
            k = _number(req, "top_logprobs", int, 1, 0, 20)
            pt = client.prompt_tokens(msgs)
            if pt + max_tokens > client.max_context:
                raise BadRequest(
                    f"This model's maximum context length is {client.max_context} tokens; the prompt has "
                    f"{pt} tokens and max_tokens is {max_tokens} (context_length_exceeded)"
                )
            logprobs, gone = None, threading.Event()
            if want_lp:
                top = self._wait(batcher.submit(("top", 1, 0.0, max(1, k)), msgs, gone), gone)
                first = top[0]
                logprobs = {
                    "content": [
                        {
                            "token": first[0],
                            "logprob": first[1],
                            "bytes": list(first[0].encode()),
                            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top],
                        }
                    ]
                }
            if want_lp and max_tokens == 1:
                text, ct, finish = top[0][0], 1, "length"
            else:
                c = self._wait(batcher.submit(("gen", max_tokens, temperature, 0), msgs, gone), gone)
                if c.error and c.text is None:
                    raise BadRequest(c.error)
                text, ct = c.text or "", c.completion_tokens
                finish = "length" if ct >= max_tokens else "stop"
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }
                ],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
            }

    return Handler


def make_server(
    model: str = "embedded",
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 8,
    batch_wait: float = 0.01,
    client: LocalClient | None = None,
    max_tokens_cap: int = 1024,
    max_body: int = 1 << 20,
    request_timeout: float = 60.0,
) -> ThreadingHTTPServer:
    if max_tokens_cap < 1 or max_body < 1 or batch_size < 1 or batch_wait < 0:
        raise UserError("--max-tokens-cap, --max-body and --batch-size must be >= 1, --batch-wait >= 0")
    if not (math.isfinite(request_timeout) and request_timeout > 0):
        raise UserError(f"--request-timeout must be a positive number of seconds, got {request_timeout}")
    client = client or LocalClient(model, batch_size=batch_size)
    batcher = _Batcher(client, batch_size, batch_wait)
    model_id = client.lm.name
    handler = make_handler(client, batcher, model_id, max_tokens_cap, max_body, request_timeout)
    server = _Server((host, port), handler)
    server.model_id = model_id  # type: ignore[attr-defined]
    return server


@dataclass
class LlmServerConfig:
    """`saelab serve-llm`: what to serve, where, and the batching and request limits."""

    model: str = model_option()
    host: str = opt("127.0.0.1", "bind address (127.0.0.1: loopback only)")
    port: int = opt(8000, "port (0 = any free port; the URL is printed)")
    batch_size: int = opt(8, "prompts per forward pass")
    batch_wait: float = opt(0.01, "seconds to wait for more requests to batch")
    max_tokens_cap: int = opt(1024, "largest max_tokens a request may ask for; more is a 400")
    max_body: int = opt(1 << 20, "largest request body in bytes, refused with 413 before it is read")
    request_timeout: float = opt(60.0, "seconds a connection may send nothing before it is closed")
    threads: int | None = threads_option()

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "threads")
        if not 0 <= self.port < 65536:  # before the model loads (saelab/interpret/llm_server.py: issue 33 D)
            raise UserError(f"option --port must be in 0..65535 (0: any free port), got {self.port}")


def serve(cfg: LlmServerConfig) -> None:
    """Serve until Ctrl-C (make_server checks the limits)."""
    cfg.validate()
    if cfg.host not in LOOPBACK:
        print(f"saelab: warning: serving on {cfg.host}, reachable from other machines; there is no authentication")
    server = make_server(
        cfg.model,
        cfg.host,
        cfg.port,
        cfg.batch_size,
        cfg.batch_wait,
        max_tokens_cap=cfg.max_tokens_cap,
        max_body=cfg.max_body,
        request_timeout=cfg.request_timeout,
    )
    h, p = server.server_address[:2]
    print(f"saelab: serving {server.model_id} (OpenAI-compatible) at http://{h}:{p}/v1  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
