"""Latency and resets of the real `saelab serve-llm` under many concurrent clients (issue 33).

    python bench/serve_llm_load.py [--model embedded] [--clients 50] [--rounds 4] [--max-tokens 16]
                                   [--batch-size 8] [--threads N] [--out bench/serve_llm_load.result.json]

Starts `saelab serve-llm --port 0` as a subprocess (the real server and model, nothing stubbed), then
--clients threads released at once by a barrier each send --rounds chat completions, each on a fresh
connection (a burst of new connections is what a small listen backlog turns into resets). Prints one
JSON object: p50 / p90 / p99 / max latency over the answered requests, requests/s, how many answers were
200, how many connections were reset or closed without an answer, other errors by type, and the number
of tracebacks the server printed (should be 0). Exits 1 when any request was not answered 200.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

RESETS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected)
TEXTS = ["the cat sat on the mat", "x = 1 + 2", "a dog barked at night", "import os", "rain fell all day"]


def start_server(model: str, batch_size: int, threads: int | None, log) -> tuple[subprocess.Popen, str, int]:
    """`saelab serve-llm` on a free loopback port -> (process, host, port); its output goes to `log`."""
    cmd = [sys.executable, "-m", "saelab.cli", "serve-llm", "--model", model, "--port", "0"]
    cmd += ["--batch-size", str(batch_size)] + (["--threads", str(threads)] if threads else [])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in p.stdout:
        m = re.search(r"http://([\d.]+):(\d+)/v1", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()  # keep draining
            return p, m.group(1), int(m.group(2))
    p.wait()
    raise SystemExit(f"serve-llm did not start (exit {p.returncode}); see its log")


def one_request(host: str, port: int, body: bytes, timeout: float) -> tuple[str, float]:
    """One POST on a fresh connection -> (outcome, seconds): "200", another status, "reset" or an error name."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return str(r.status), time.perf_counter() - t0
    except RESETS:
        return "reset", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001  (counted by type, the run goes on)
        return type(e).__name__, time.perf_counter() - t0
    finally:
        conn.close()


def load(host: str, port: int, clients: int, rounds: int, max_tokens: int, timeout: float = 600.0) -> dict:
    """`clients` threads released together, `rounds` requests each -> the summary (see the module doc)."""
    barrier = threading.Barrier(clients)
    results: list[tuple[str, float]] = []
    lock = threading.Lock()

    def client(i: int):
        barrier.wait()
        for r in range(rounds):
            msg = f"Continue this text: {TEXTS[(i + r) % len(TEXTS)]} ({i}.{r})"
            body = json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": msg}], "max_tokens": max_tokens}
            ).encode()
            out = one_request(host, port, body, timeout)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(s for o, s in results if o == "200")
    outcomes = Counter(o for o, _ in results)

    def pct(q: float) -> float | None:
        return round(1000 * ok[min(len(ok) - 1, int(q * len(ok)))], 1) if ok else None

    return {
        "clients": clients,
        "requests": len(results),
        "ok_200": outcomes.pop("200", 0),
        "resets": outcomes.pop("reset", 0),
        "other": dict(outcomes),
        "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * ok[-1], 1) if ok else None,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    a = ap.parse_args()
    with tempfile.TemporaryFile("w+") as log:
        p, host, port = start_server(a.model, a.batch_size, a.threads, log)
        try:
            res = load(host, port, a.clients, a.rounds, a.max_tokens)
        finally:
            p.terminate()
            p.wait(timeout=60)
        log.seek(0)
        server_log = log.read()
    res.update(
        model=a.model,
        max_tokens=a.max_tokens,
        batch_size=a.batch_size,
        server_tracebacks=server_log.count("Traceback"),
        server_log_tail=server_log[-2000:],
    )
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if res["ok_200"] == res["requests"] and not res["server_tracebacks"] else 1)


if __name__ == "__main__":
    main()
