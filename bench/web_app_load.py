"""The real `saelab serve` web app under concurrent fire-on-text clients and steering jobs (issue 31, item 10).

    python bench/web_app_load.py --sae RUN/SAE [--clients 20] [--rounds 10] [--steer-jobs 1] [--steer-tokens 30]
                                 [--tokens 16384] [--threads N] [--out bench/web_app_load.result.json]

Starts `saelab serve SAE` as a subprocess (the real app, model and feature store, nothing stubbed) and waits
until it answers. Then --clients threads and one steering thread are released together by a barrier: each
client sends --rounds POST /api/fire (a 20-60 token text, a fresh connection each), while the steering
thread submits --steer-jobs steering requests as the home page sends them (clamp the densest feature to 1x
its max activation, the strength sweep, --steer-tokens new tokens) and polls GET /api/jobs/ID until each
is finished. Beyond 4 queued or running jobs the app answers 429 (documented: docs/VIEW.md "Bounds").

Prints one JSON object: fire-on-text p50 / p90 / p99 / max latency over the 200 answers and requests/s;
the fire answers that came back while a steering job was running (the app promises that fire-on-text waits
at most one token for a generation, not for the whole job) and their p50; the steering jobs (accepted,
refused with 429, final states, seconds each); the server's RSS when ready, its peak RSS sampled during the
load and its lifetime peak (VmHWM, which includes loading the model and building the feature cache); answers
by route and status, 5xx and any status the route does not document, and the tracebacks in the server's log.
Exits 1 when a 5xx, an undocumented status, an unfinished or failed steering job or a traceback was seen.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from saelab.features.steering import DEFAULT_STRENGTH, SWEEP

TEXTS = [
    "The cat sat on the mat and looked out of the window at the rain falling on the garden all afternoon.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # prints 3",
    "In 1969 the first people walked on the Moon, and millions watched the grainy pictures on television.",
    "She opened the old book, blew the dust off its cover, and began to read the first chapter aloud.",
    "Prices rose by 3% in March, the bank said, and it expects them to fall again before the end of the year.",
]
ALLOWED = {"fire": {"200"}, "steer": {"202", "429"}, "jobs": {"200"}}  # documented answers per route
FINISHED = ("done", "error", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, obj=None, timeout: float = 300.0) -> tuple[str, float, float, object]:
    """One request on a fresh connection -> (status or error name, start, end, JSON body or None)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = None if obj is None else json.dumps(obj).encode()
        conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        r = conn.getresponse()
        data = r.read()
        try:
            out = json.loads(data)
        except ValueError:
            out = None
        return str(r.status), t0, time.perf_counter(), out
    except Exception as e:  # noqa: BLE001  (counted by type, the run goes on)
        return type(e).__name__, t0, time.perf_counter(), None
    finally:
        conn.close()


def start_server(sae: str, tokens: int, threads: int | None, log, wait_s: float = 1800.0):
    """`saelab serve SAE` on a free loopback port -> (process, port, served name); output goes to `log`.
    Ready when GET /api/saes answers (the feature cache is built before the app listens)."""
    port = free_port()
    cmd = [sys.executable, "-m", "saelab.cli", "serve", sae, "--port", str(port), "--tokens", str(tokens)]
    cmd += ["--threads", str(threads)] if threads else []
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    t0 = time.time()
    while time.time() - t0 < wait_s:
        if p.poll() is not None:
            log.seek(0)
            raise SystemExit(f"saelab serve exited {p.returncode} before answering:\n{log.read()[-2000:]}")
        status, _, _, out = call(port, "GET", "/api/saes", timeout=5)
        if status == "200":
            return p, port, out[0]["name"]
        time.sleep(0.5)
    p.kill()
    raise SystemExit(f"saelab serve did not answer within {wait_s:.0f} s")


def rss_mb(pid: int) -> dict:
    """Resident set and its high-water mark of `pid` in MB (Linux /proc; empty elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    kb = {
        k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in text.splitlines()) if k in ("VmRSS", "VmHWM")
    }
    return {k: round(v / 1024, 1) for k, v in kb.items()}


def _ms(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None


def steer_request(name: str, latent: int, tokens: int) -> dict:
    """What the home page sends by default: clamp to DEFAULT_STRENGTH x max activation, the strength sweep."""
    edit = {"latent": latent, "op": "clamp", "value": DEFAULT_STRENGTH, "relative": True}
    return {
        "sae": name,
        "prompt": "The weather today is",
        "edits": [edit],
        "max_new_tokens": tokens,
        "strengths": list(SWEEP),
    }


def load(port: int, name: str, clients: int, rounds: int, steer_jobs: int, steer_tokens: int, pid=None) -> dict:
    """`clients` fire-on-text threads and one steering thread released together -> the summary (module doc)."""
    status, _, _, top = call(port, "GET", f"/api/search?sae={quote(name)}&q=&limit=1")  # the densest feature
    if status != "200" or not top["results"]:
        raise SystemExit(f"GET /api/search answered {status}: {top}")
    latent = top["results"][0]["id"]
    barrier = threading.Barrier(clients + 1)
    answers: list[tuple[str, str, float, float]] = []  # (route, status, start, end)
    jobs: list[dict] = []
    lock = threading.Lock()
    done = threading.Event()

    def note(route, status, t0, t1):
        with lock:
            answers.append((route, status, t0, t1))

    def client(i: int):
        barrier.wait()
        for r in range(rounds):
            text = f"{TEXTS[(i + r) % len(TEXTS)]} ({i}.{r})"
            note("fire", *call(port, "POST", "/api/fire", {"sae": name, "text": text, "top": 5})[:3])

    def steering():
        barrier.wait()
        ids = []
        for _ in range(steer_jobs):  # one after another: beyond the bound they are refused with 429
            status, t0, t1, out = call(port, "POST", "/api/steer", steer_request(name, latent, steer_tokens))
            if status == "429" and "wait for one to finish" not in str((out or {}).get("detail")):
                status = "429 without its sentence"
            note("steer", status, t0, t1)
            if status == "202":
                ids.append((out["job"], t0))
        pending = dict(ids)
        while pending:
            for job, t_submit in list(pending.items()):
                status, t0, t1, out = call(port, "GET", f"/api/jobs/{job}")
                note("jobs", status, t0, t1)
                state = out.get("status") if isinstance(out, dict) else None
                if status != "200" or state in FINISHED:
                    wall = (out or {}).get("result") or {}
                    jobs.append(
                        {"status": state or status, "seen_s": round(t1 - t_submit, 2), "wall_s": wall.get("wall_s")}
                    )
                    del pending[job]
            time.sleep(0.1)

    peak = [0.0]

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid).get("VmRSS", 0.0)) if pid else 0.0
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] + [threading.Thread(target=steering)]
    sampler = threading.Thread(target=sample, daemon=True)
    rss_ready = rss_mb(pid) if pid else {}
    sampler.start()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    by_route = {r: dict(Counter(s for rr, s, *_ in answers if rr == r)) for r in ALLOWED}
    fire = [(s, a, b) for r, s, a, b in answers if r == "fire"]
    ok = [b - a for s, a, b in fire if s == "200"]
    steer_starts = [a for r, s, a, _ in answers if r == "steer" and s == "202"]
    steer_end = max((b for r, s, _, b in answers if r == "jobs"), default=None)
    during = [b - a for s, a, b in fire if s == "200" and steer_starts and min(steer_starts) < b < steer_end]
    return {
        "clients": clients,
        "rounds": rounds,
        "latent": latent,
        "fire_requests": len(fire),
        "fire_ok": len(ok),
        "fire_p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
        "fire_p90_ms": _ms(ok, 0.90),
        "fire_p99_ms": _ms(ok, 0.99),
        "fire_max_ms": _ms(ok, 1.0),
        "fire_per_s": round(len(fire) / wall, 2),
        "fire_during_steering": len(during),
        "fire_during_steering_p50_ms": round(1000 * statistics.median(during), 1) if during else None,
        "steer_submitted": steer_jobs,
        "steer_accepted": len(steer_starts),
        "steer_refused_429": by_route["steer"].get("429", 0),
        "steer_jobs": jobs,
        "answers": by_route,
        "five_xx": sum(n for c in by_route.values() for s, n in c.items() if s.startswith("5")),
        "undocumented": {
            r: {s: n for s, n in c.items() if s not in ALLOWED[r]} for r, c in by_route.items() if set(c) - ALLOWED[r]
        },
        "rss_ready_mb": rss_ready.get("VmRSS"),
        "peak_rss_load_mb": peak[0] or None,
        "wall_s": round(wall, 2),
    }


def passed(res: dict) -> bool:
    """No 5xx, nothing undocumented, every accepted steering job done, no traceback in the server's log."""
    jobs_ok = res["steer_accepted"] >= 1 and all(j["status"] == "done" for j in res["steer_jobs"])
    return not res["five_xx"] and not res["undocumented"] and jobs_ok and not res.get("server_tracebacks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", required=True, help="SAE folder to serve (e.g. runs/quickstart/model.layers.6-topk-k32)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10, help="fire-on-text requests per client")
    ap.add_argument("--steer-jobs", type=int, default=1, help="steering requests submitted (beyond 4 pending: 429)")
    ap.add_argument("--steer-tokens", type=int, default=30, help="new tokens per steering generation")
    ap.add_argument("--tokens", type=int, default=16384, help="the server's feature-cache tokens (serve --tokens)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    a = ap.parse_args()
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.time()
        p, port, name = start_server(a.sae, a.tokens, a.threads, log)
        startup = time.time() - t0
        try:
            res = load(port, name, a.clients, a.rounds, a.steer_jobs, a.steer_tokens, pid=p.pid)
            res["peak_rss_lifetime_mb"] = rss_mb(p.pid).get("VmHWM")
        finally:
            p.terminate()
            p.wait(timeout=60)
        log.seek(0)
        server_log = log.read()
    res.update(
        sae=a.sae,
        steer_tokens=a.steer_tokens,
        startup_s=round(startup, 1),
        server_tracebacks=server_log.count("Traceback"),
        server_log_tail=server_log[-1500:],
    )
    res["passed"] = passed(res)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if res["passed"] else 1)


if __name__ == "__main__":
    main()
