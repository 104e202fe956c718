"""Fault injection for the LLM clients and `serve-llm` (docs/research/reliability.md), on loopback, CPU only.

1. The OpenAI client with its command-line defaults (--max-retries 4, --concurrency 4, backoff 1 s)
   against a server that answers 500 to everything: requests sent and seconds until it gives up on
   50 prompts (a run's worth of latents), and the same against a closed port.
2. Bad replies: a 200 with an HTML body, a 5 MB reply: recorded failures, and how long the stored
   raw text is.
3. `serve-llm` (the embedded model, --max-body 1 MiB): seconds to answer a fake Content-Length of
   1e11 and a real 10 MB body (413, from the header), and a bad body (400).

    python bench/llm_faults.py      # prints one JSON object
"""

import json
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_reliability import FakeLLM, _raw  # noqa: E402  (the same fake server and raw client as the tests)

from saelab.interpret.clients import OpenAIClient  # noqa: E402

MSG = [{"role": "user", "content": "what do these have in common?"}]
out = {}

fake = FakeLLM()
fake.mode = "error500"
c = OpenAIClient(model="m", base_url=fake.url)
t = time.time()
res = c.generate([MSG] * 50, max_tokens=64)
out["dead_500"] = {
    "prompts": 50,
    "requests_sent": fake.requests,
    "seconds": round(time.time() - t, 1),
    "failed": sum(not r.ok for r in res),
    "down": c.down,
}
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
c = OpenAIClient(model="m", base_url=f"http://127.0.0.1:{port}/v1")
t = time.time()
res = c.generate([MSG] * 50, max_tokens=64)
out["closed_port"] = {
    "prompts": 50,
    "seconds": round(time.time() - t, 1),
    "failed": sum(not r.ok for r in res),
    "retries": c.usage.retries,
    "down": c.down,
}
c = OpenAIClient(model="m", base_url=fake.url, max_retries=0)
for mode in ("nonjson", "huge"):
    fake.mode = mode
    r = c.generate([MSG], max_tokens=64)[0]
    out[mode] = {"ok": r.ok, "error": r.error[:80], "stored_chars": len(r.text or "")}
fake.srv.shutdown()

from saelab.interpret.llm_server import make_server  # noqa: E402

srv = make_server("embedded", port=0)
threading.Thread(target=srv.serve_forever, daemon=True).start()
p = srv.server_address[1]
for name, length in (("fake_length_1e11", 10**11), ("body_10MB", 10 * 2**20)):
    t = time.time()
    code, _ = _raw(p, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    out[f"serve_llm_{name}"] = {"status": code, "seconds": round(time.time() - t, 3)}
body = json.dumps({"messages": [{"role": "user", "content": 5}]}).encode()
code, _ = _raw(
    p, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body
)
out["serve_llm_content_int"] = {"status": code}
srv.shutdown()
print(json.dumps(out, indent=1))
