"""Page-load, search and fire-on-text latency of the web app on the embedded model.

    python bench/view_latency.py --sae RUN/SAE [--search-latents 5120] [--threads 1]

Measures, on a real uvicorn server on loopback:
  - feature page: server time for GET /sae/NAME/feature/I (HTML), and the browser's load time
    (navigation start -> load event, headless Debian chromium) for an app page and a static page;
  - search over a dictionary of --search-latents features (a randomly initialised TopK SAE of
    that width on the same hookpoint, cached over the same tokens, with one explanation per
    feature made from its top tokens: the timing does not depend on what the features mean);
  - POST /api/fire for a 64-token text.
Prints one JSON object; medians over repeated requests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch


def timed(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return {"median_ms": 1000 * statistics.median(out), "max_ms": 1000 * max(out), "n": n}


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def post(url, obj):
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", required=True)
    ap.add_argument("--search-latents", type=int, default=5120)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--render-before", help="a copy of an older saelab/view/render.py: also size its pages (before/after)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import uvicorn

    from saelab.models import load_model
    from saelab.sae import SaeConfig, build_sae
    from saelab.sae.folder import load_sae, open_sae, save_sae
    from saelab.view.feature_store import FeatureStore
    from saelab.view.static_site import write_dashboard
    from saelab.view.web_app import create_app

    sae, cfg = load_sae(Path(args.sae))
    lm = load_model(cfg["saelab"].get("model_spec", "embedded"))
    t0 = time.perf_counter()
    store = FeatureStore.build(args.sae, tokens=args.tokens, model=lm.model, tokenizer=lm.tokenizer, progress=False)
    build_s = time.perf_counter() - t0

    # The wide dictionary for search timing.
    wide_dir = Path(tempfile.mkdtemp()) / f"wide{args.search_latents}"
    wide = build_sae(SaeConfig("topk", d_in=sae.cfg.d_in, d_sae=args.search_latents, hookpoint=sae.cfg.hookpoint, k=32))
    wide.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        wide.b_dec.copy_(sae.b_dec)
    save_sae(wide.eval(), wide_dir, open_sae(Path(args.sae)).provenance)  # same model, corpus, split, sinks
    t0 = time.perf_counter()
    wide_store = FeatureStore.build(
        wide_dir, tokens=args.tokens, model=lm.model, tokenizer=lm.tokenizer, progress=False
    )
    wide_build_s = time.perf_counter() - t0
    with open(wide_dir / "explanations.jsonl", "w") as f:
        for i in range(wide_store.d_sae):
            f.write(
                json.dumps(
                    {"latent": i, "explanation": "tokens " + " ".join(t.strip() for t in wide_store.top_tokens[i])}
                )
                + "\n"
            )
    from saelab.interpret.records import interpretations

    wide_store.explanations = interpretations(wide_dir / "explanations.jsonl", wide_dir, wide_store.d_sae)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(create_app([store, wide_store]), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    name, wname = store.name, wide_store.name
    ids = iter(range(10**9))
    res = {
        "machine": "2-core CPU, shared with other jobs",
        "sae": args.sae,
        "d_sae": store.d_sae,
        "cache_tokens": args.tokens,
        "store_build_s": build_s,
        "wide_store_build_s": wide_build_s,
    }
    res["feature_page_server"] = timed(lambda: get(f"{base}/sae/{name}/feature/{(next(ids) * 37) % store.d_sae}"), 30)
    words = [wide_store.top_tokens[i][0].strip() for i in range(0, wide_store.d_sae, 97) if wide_store.top_tokens[i]]
    words = [w for w in words if w] or ["the"]
    k = iter(range(10**9))
    res[f"search_text_{wide_store.d_sae}"] = timed(
        lambda: get(f"{base}/api/search?sae={wname}&by=text&q={urllib.request.quote(words[next(k) % len(words)])}"), 20
    )
    k = iter(range(10**9))
    res[f"search_token_{wide_store.d_sae}"] = timed(
        lambda: get(f"{base}/api/search?sae={wname}&by=token&q={urllib.request.quote(words[next(k) % len(words)])}"), 20
    )
    text64 = lm.tokenizer.decode(store.cache.tokens[0, 1:64].tolist())
    ntok = len(lm.tokenizer(text64, add_special_tokens=False)["input_ids"]) + 1
    post(f"{base}/api/fire", {"sae": name, "text": text64})  # warm-up
    res["fire_tokens"] = ntok
    res["fire_64_tokens"] = timed(lambda: post(f"{base}/api/fire", {"sae": name, "text": text64}), 20)

    # a steering sweep: 4 strengths x 30 tokens (+ the unsteered 30), and a page load while it runs
    from saelab.features.steering import SWEEP

    top = int(store.freq.argmax())
    t0 = time.perf_counter()
    job = post(
        f"{base}/api/steer",
        {
            "sae": name,
            "prompt": "My favourite hobby is",
            "max_new_tokens": 30,
            "strengths": list(SWEEP),
            "edits": [{"latent": top, "value": 1, "relative": True}],
        },
    )["job"]
    during = timed(lambda: get(f"{base}/sae/{name}/feature/{top}"), 5)
    while json.loads(get(f"{base}/api/jobs/{job}"))["status"] not in ("done", "error", "cancelled"):
        time.sleep(0.05)
    res["steer_sweep_4x30_s"] = time.perf_counter() - t0
    res["feature_page_server_during_sweep"] = during

    out = write_dashboard(store, Path(tempfile.mkdtemp()) / "dash", latents=list(range(50)), progress=False)
    size = sum(p.stat().st_size for p in (out / "features").iterdir())
    res["dashboard_feature_pages_mb_per_1000"] = size / 50 * 1000 / 1e6
    if args.render_before:
        import importlib.util

        spec = importlib.util.spec_from_file_location("render_before", args.render_before)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        before = sum(
            len(
                old.feature_page(
                    dict(store.view(i), scores={}), link=lambda j: f"{j}.html", home="../index.html"
                ).encode()
            )
            for i in range(50)
        )
        res["dashboard_feature_pages_mb_per_1000_before"] = before / 50 * 1000 / 1e6
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            b = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = b.new_page()
            q = next(w for w in words if w.isalpha()) if any(w.isalpha() for w in words) else words[0]

            def load(url):
                page.goto(url, wait_until="load")
                return page.evaluate("performance.getEntriesByType('navigation')[0].duration")

            for label, urlf in (
                ("browser_app_feature_page", lambda i: f"{base}/sae/{name}/feature/{i}"),
                ("browser_static_feature_page", lambda i: (out / "features" / f"{i}.html").as_uri()),
                ("browser_app_home", lambda i: f"{base}/"),
            ):
                ms = [load(urlf(i)) for i in range(1, 21)]
                res[label] = {"median_ms": statistics.median(ms), "max_ms": max(ms), "n": len(ms)}

            def ui(action, done_js, n=10):  # click -> result shown, in the page
                ms = []
                for _ in range(n):
                    page.evaluate(action)
                    t0 = time.perf_counter()
                    page.wait_for_function(done_js, timeout=120000)
                    ms.append(1000 * (time.perf_counter() - t0))
                return {"median_ms": statistics.median(ms), "max_ms": max(ms), "n": n}

            page.goto(f"{base}/")
            page.wait_for_selector("#sae option", state="attached")
            page.select_option("#sae", wname)
            page.fill("#q", q)
            res["browser_search_click_to_results"] = ui(
                "document.getElementById('results').tBodies[0].replaceChildren(); document.getElementById('searchbtn').click()",
                "document.querySelectorAll('#results tbody tr').length > 0",
            )
            page.select_option("#sae", name)
            page.fill("#firetext", text64)
            res["browser_fire_click_to_tokens"] = ui(
                "document.getElementById('firetokens').replaceChildren(); document.getElementById('firebtn').click()",
                "document.querySelectorAll('#firetokens .fire').length > 0",
            )
            page.fill("#latent", str(top))
            page.fill("#value", "1")
            page.fill("#ntok", "30")
            res["browser_steer_sweep_4x30_click_to_outputs"] = ui(
                "document.getElementById('steerbtn').click()",
                "document.getElementById('steerstatus').textContent.startsWith('done')",
                n=2,
            )
            shots = os.environ.get("SAELAB_SCREENSHOTS")
            if shots:
                page.screenshot(path=str(Path(shots) / "app_steer_sweep.png"), full_page=True)
                page.goto(f"{base}/sae/{name}/feature/{top}")
                page.screenshot(path=str(Path(shots) / "feature_page.png"), full_page=True)
            b.close()
    except ImportError:
        res["browser"] = "playwright not installed"
    srv.should_exit = True
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
