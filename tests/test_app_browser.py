"""The web app over a real uvicorn server on loopback: HTTP behaviour (4xx on bad input, no path
traversal, jobs, responsiveness during a generation), then a real headless Chromium driven by
Playwright: search, open a feature, fire-on-text, steering playground, and escaping.

Browser tests need Debian's chromium (`apt-get install -y chromium chromium-driver`) and
`pip install playwright` (never `playwright install`: it downloads a browser). They skip, saying
why, only when /usr/bin/chromium is absent. Screenshots go to the test's tmp folder and to
$SAELAB_SCREENSHOTS when set.
"""

import contextlib
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from graph_fixture import serve
from view_helpers import make_interpretation_run, make_sae_folder

from saelab.features.steer import encode_prompt, generate
from saelab.models import load_model
from saelab.view.feature_store import FeatureStore

CHROMIUM = "/usr/bin/chromium"
XSS_EXPL = "<script>window.__pwned=1</script>cats and dogs"


@contextlib.contextmanager
def _uvicorn(stores):
    """A real uvicorn server on a free loopback port over `stores` -> its base URL."""
    with serve(stores) as (base, _):
        yield base


@pytest.fixture(scope="module")
def server(tiny_model_dir, text_corpus, tmp_path_factory):
    folder = make_sae_folder(tmp_path_factory.mktemp("sae") / "app_sae", tiny_model_dir, text_corpus)
    (folder / "explanations.jsonl").write_text(json.dumps({"latent": 2, "explanation": XSS_EXPL}) + "\n")
    lm = load_model(str(tiny_model_dir))
    store = FeatureStore.build(folder, tokens=4096, model=lm.model, tokenizer=lm.tokenizer, progress=False)
    with _uvicorn([store]) as base:
        yield base, store


@pytest.fixture(scope="module")
def run_server(server, tmp_path_factory):
    """The same SAE served with an interpretation run made by the CLI (explain --explainer stats, score
    --scorers embedding) as its --explanations."""
    _, store = server
    cache, run, _, lat = make_interpretation_run(store.sae_dir, tmp_path_factory.mktemp("interp"))
    s2 = FeatureStore.build(
        store.sae_dir,
        cache=cache,
        explanations=run,
        model=store.model,
        tokenizer=store.tok,
        name="run_sae",
        progress=False,
    )
    with _uvicorn([s2]) as base:
        yield base, s2, run, lat


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _post(url, obj):
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_job(base, job, until=("done", "error")):
    for _ in range(600):
        _, body = _get(f"{base}/api/jobs/{job}")
        j = json.loads(body)
        if j["status"] in until:
            return j
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def test_bad_input_gets_clear_4xx(server):
    base, store = server
    code, body = _get(f"{base}/sae/nope/feature/1")
    assert code == 404 and "unknown SAE 'nope'" in body
    code, body = _get(f"{base}/sae/app_sae/feature/abc")
    assert code == 422 and "Traceback" not in body
    code, body = _get(f"{base}/sae/app_sae/feature/{store.d_sae}")
    assert code == 404 and f"0..{store.d_sae - 1}" in body
    code, body = _get(f"{base}/sae/app_sae/feature/-1")
    assert code == 404
    code, body = _post(f"{base}/api/fire", {"sae": "app_sae", "text": "x" * 5000})
    assert code == 422
    code, body = _post(f"{base}/api/fire", {"sae": "app_sae", "text": "word " * 700})
    assert code == 400 and "limit is 256" in body["detail"]
    code, body = _post(
        f"{base}/api/steer", {"sae": "app_sae", "prompt": "hi", "edits": [{"latent": 10**6, "value": 1}]}
    )
    assert code == 400 and "does not exist" in body["detail"]
    code, body = _post(
        f"{base}/api/steer",
        {"sae": "app_sae", "prompt": "hi", "max_new_tokens": 10**6, "edits": [{"latent": 1, "value": 1}]},
    )
    assert code == 422
    code, body = _get(f"{base}/api/search?sae=app_sae&q=x&by=sql")
    assert code == 422
    code, body = _get(f"{base}/api/jobs/999999")
    assert code == 404
    for bad in ({"strengths": []}, {"strengths": [1] * 9}, {"seed": -1}, {"edits": [{"latent": -1, "value": 1}]}):
        code, body = _post(
            f"{base}/api/steer", {"sae": "app_sae", "prompt": "hi", "edits": [{"latent": 1, "value": 1}], **bad}
        )
        assert code == 422, bad
    code, body = _post(
        f"{base}/api/steer",
        {"sae": "app_sae", "prompt": "hi", "strengths": [1e9], "edits": [{"latent": 1, "value": 1}]},
    )
    assert code == 400 and "strength" in body["detail"]


def test_request_size_is_checked_before_the_body_is_read(server):
    import http.client

    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    big = json.dumps({"sae": "app_sae", "text": "x" * 70_000}).encode()
    code, body = _post(f"{base}/api/fire", {"sae": "app_sae", "text": "x" * 70_000})
    assert code == 413 and "bytes" in body["detail"]
    # a declared length over the limit is refused without sending the body at all
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.putrequest("POST", "/api/steer")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(10**9))
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413
    c.close()
    # a chunked body (no Content-Length) is cut off at the limit: 413, not a 500
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request(
        "POST",
        "/api/fire",
        body=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    r = c.getresponse()
    assert r.status == 413, r.read()
    c.close()


def test_steering_queue_is_bounded_and_jobs_can_be_cancelled(server):
    from saelab.view.web_app import MAX_PENDING

    base, _ = server
    req = {
        "sae": "app_sae",
        "prompt": "Once upon a time",
        "max_new_tokens": 200,
        "strengths": [1, 2, 3, 4, 5, 6, 7, 8],
        "edits": [{"latent": 3, "op": "clamp", "value": 20}],
    }
    jobs = []
    for _ in range(MAX_PENDING):
        code, body = _post(f"{base}/api/steer", req)
        assert code == 202
        jobs.append(body["job"])
    code, body = _post(f"{base}/api/steer", req)
    assert code == 429 and "already queued or running" in body["detail"]
    for job in jobs:
        assert _post(f"{base}/api/jobs/{job}/cancel", {})[0] == 200
    for job in jobs:
        j = _wait_job(base, job, until=("cancelled",))
        assert j["result"] is None
    # finished jobs stay until fetched; the queue has room again
    code, body = _post(f"{base}/api/steer", {**req, "max_new_tokens": 2, "strengths": [1]})
    assert code == 202 and _wait_job(base, body["job"])["status"] == "done"
    assert _post(f"{base}/api/jobs/nope/cancel", {})[0] == 404


def test_no_path_traversal(server, tmp_path):
    base, _ = server
    secret = Path(__file__).resolve()
    for path in [
        "/../../etc/passwd",
        "/sae/..%2F..%2Fetc%2Fpasswd/feature/0",
        "/static/../../etc/passwd",
        "/sae/app_sae/feature/0/../../../../etc/passwd",
        f"/{secret}",
        "/%2e%2e/%2e%2e/etc/passwd",
    ]:
        code, body = _get(base + path)
        assert code == 404, path
        assert "root:" not in body and "def test_no_path_traversal" not in body


def test_fire_search_and_feature_json(server):
    base, store = server
    code, body = _post(f"{base}/api/fire", {"sae": "app_sae", "text": "The cat sat on the mat."})
    assert code == 200
    toks = body["tokens"]
    assert "".join(t["token"] for t in toks) == "The cat sat on the mat."
    assert all(len(t["features"]) == 5 for t in toks)  # k=8 latents fire on every token; top 5 shown
    acts = [f["act"] for f in toks[1]["features"]]
    assert acts == sorted(acts, reverse=True)
    code, body = _get(f"{base}/api/search?sae=app_sae&q=cats%20dogs")
    assert code == 200 and [r["id"] for r in json.loads(body)["results"]] == [2]
    code, body = _get(f"{base}/api/sae/app_sae/feature/2")
    v = json.loads(body)
    assert v["explanation"] == XSS_EXPL and v["max_act"] == pytest.approx(float(store.max_act[2]))


def test_steering_job_matches_library_and_server_stays_responsive(server):
    base, store = server
    prompt = "Once upon a time"
    code, body = _post(
        f"{base}/api/steer",
        {
            "sae": "app_sae",
            "prompt": prompt,
            "max_new_tokens": 200,
            "edits": [{"latent": 3, "op": "clamp", "value": 20}],
        },
    )
    assert code == 202
    job = body["job"]
    # While the 400-forward job runs, a search, a feature page and a fire request are answered.
    assert _get(f"{base}/api/search?sae=app_sae&q=about")[0] == 200
    assert _get(f"{base}/sae/app_sae/feature/1")[0] == 200
    assert _post(f"{base}/api/fire", {"sae": "app_sae", "text": "hello there"})[0] == 200
    mid = json.loads(_get(f"{base}/api/jobs/{job}")[1])
    assert mid["status"] in ("queued", "running") and mid["generation"] < mid["generations"] == 2
    assert mid["max_tokens"] == 200 and mid["tokens"] <= 200
    j = _wait_job(base, job)
    assert j["status"] == "done" and j["generation"] == j["generations"] and j["result"]["prompt"] == prompt
    assert j["result"]["sweep"][0]["edits"] == [{"latent": 3, "op": "clamp", "value": 20.0}]
    ids = encode_prompt(store.tok, prompt)
    clean = store.tok.decode(generate(store.model, store.tok, ids, 200), skip_special_tokens=True)
    assert j["result"]["unsteered"] == clean and j["result"]["steered"] != clean


# ---------------------------------------------------------------- the real browser


def _browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def _launch(pw):
    """Debian's headless Chromium with the flags this offline machine needs."""
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def _shot(page, tmp_path, name):
    p = tmp_path / f"{name}.png"
    page.screenshot(path=str(p), full_page=True)
    keep = os.environ.get("SAELAB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, Path(keep) / p.name)
    assert p.stat().st_size > 2000  # a real rendered page


def test_browser_search_feature_fire_steer_and_escaping(server, tmp_path):
    base, store = server
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_selector("#sae option", state="attached")
        assert page.locator("#saeinfo").inner_text().startswith(f"{store.d_sae} features")

        # search by explanation, open the hit
        page.fill("#q", "cats dogs")
        page.click("#searchbtn")
        page.wait_for_selector("#results a.result")
        row = page.locator("#results tbody tr").first.inner_text()
        assert "<script>window.__pwned=1</script>cats and dogs" in row  # shown as text
        _shot(page, tmp_path, "search")
        page.click("#results a.result")
        page.wait_for_selector("#title")
        assert page.locator("#title").inner_text().endswith("feature 2")
        assert page.locator("#explanation").inner_text() == XSS_EXPL
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("#top .ex").count() == min(10, int(store.cache.fire_counts(store.dict_name)[2]))
        assert page.locator("#histogram rect").count() == 24
        _shot(page, tmp_path, "feature")
        page.click("#nearest a >> nth=0")
        page.wait_for_selector("#title")
        assert page.locator("#title").inner_text() == f"app_sae · feature {store.view(2)['nearest'][0]['id']}"

        # fire on text containing markup: shown, not executed
        page.goto(base + "/")
        page.wait_for_selector("#sae option", state="attached")
        page.fill("#firetext", "<script>window.__xss=1</script> <img src=x onerror=window.__xss=2> hello")
        page.click("#firebtn")
        page.wait_for_selector("#firetokens .fire")
        shown = "".join(page.locator("#firetokens .fire").all_inner_texts())
        assert shown.startswith("<script>window.__xss=1</script>") and "<img src=x" in shown
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("#firetokens img").count() == 0
        _shot(page, tmp_path, "fire")

        # steering playground: a sweep of 4 strengths next to the unsteered text, the prompt echoed,
        # newlines visible, the clamped values shown; the unsteered text is the model's own
        page.fill("#prompt", "Once upon a time")
        page.fill("#latent", "3")
        page.select_option("#op", "clamp")
        page.fill("#value", "20")
        page.uncheck("#relative")
        page.fill("#ntok", "12")
        page.click("#steerbtn")
        page.wait_for_function("document.getElementById('steerstatus').textContent.startsWith('done')", timeout=60000)
        ids = encode_prompt(store.tok, "Once upon a time")
        clean = store.tok.decode(generate(store.model, store.tok, ids, 12), skip_special_tokens=True)
        unsteered = page.locator("#unsteered .cont").text_content()
        assert unsteered.replace("\u21b5", "") == clean and unsteered.count("\u21b5") == clean.count("\n")
        assert page.locator("#unsteered .prompt").text_content() == "Once upon a time"
        assert page.locator("#steered .cont").text_content().replace("\u21b5", "") != clean
        heads = page.locator(".variant h3").all_inner_texts()
        assert heads == [
            f"\u00d7{x}: clamp 3 \u2192 {v}" for x, v in (("0.5", "10.0"), ("1", "20.0"), ("2", "40.0"), ("4", "80.0"))
        ]
        assert page.locator("#steerstatus").inner_text().startswith("done: 5 generations of up to 12 tokens")
        _shot(page, tmp_path, "steer")

        # a bad request shows the server's message
        page.fill("#latent", "99999")
        page.click("#steerbtn")
        page.wait_for_function("document.getElementById('steererr').textContent.length > 0")
        assert "does not exist" in page.locator("#steererr").inner_text()
        assert page.locator("#steerstatus").inner_text() == "error"  # no stale "done" from the last run
        assert page.locator("#outputs pre").count() == 0
        assert errors == []
        browser.close()


def test_static_dashboard_opens_offline_in_the_browser(server, tmp_path):
    from saelab.view.static_site import write_dashboard

    _, store = server
    out = write_dashboard(store, tmp_path / "dash", latents=list(range(8)), progress=False)
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        page.goto((out / "index.html").as_uri())
        assert page.locator("#features tbody tr").count() == 8
        page.fill("#q", "cats")
        assert page.locator("#features tbody tr:visible").count() == 1
        page.click("#features a >> text=2")
        page.wait_for_selector("#title")
        assert page.locator("#explanation").inner_text() == XSS_EXPL
        assert page.evaluate("typeof window.__pwned") == "undefined"
        _shot(page, tmp_path, "static_feature")
        browser.close()


def test_serve_command_starts_and_answers(server, tmp_path):
    """`saelab serve` as a user runs it: a real process on loopback."""
    import subprocess
    import sys

    _, store = server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saelab.cli",
            "serve",
            str(store.sae_dir),
            "--tokens",
            "4096",
            "--port",
            str(port),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        for _ in range(600):
            if proc.poll() is not None:
                break
            try:
                code, body = _get(f"http://127.0.0.1:{port}/api/saes")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "server did not start"
        assert json.loads(body) == [
            {"name": "app_sae", "d_sae": store.d_sae, "hookpoint": "model.layers.1", "n_explained": 1}
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _columns_side_by_side(page) -> None:
    """The feature page's three columns (density | logit effects | nearest) share one row: the CSS
    rule `.cols>div` reaches the browser unescaped (escaped to `.cols&gt;div` they stack)."""
    boxes = [page.locator(".cols > div").nth(k).bounding_box() for k in range(3)]
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"], boxes
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"], boxes


def _charts_drawn(page, v: dict) -> None:
    """The shared page script drew the page's numbers as the feature view `v` has them: a bar per histogram
    bin, its height in proportion to its count, its hover title (bin edges, count) and the count axis label;
    the promoted and suppressed rows (token, value, bar on one scale); each firing token of the first example
    shaded by its activation, titled with it, the peak outlined."""
    from saelab.view.render import level, token_label

    counts, edges = v["hist"]["counts"], v["hist"]["edges"]
    bars = page.eval_on_selector_all(
        "#histogram rect", "rs => rs.map(r => [+r.getAttribute('height'), r.querySelector('title').textContent])"
    )
    top = max(counts)
    assert len(bars) == len(counts) == 24
    for (h, title), c, lo, hi in zip(bars, counts, edges, edges[1:]):
        assert h == pytest.approx(90 * c / top, abs=0.051) and title == f"({lo:.3g}, {hi:.3g}]: {c}"
    assert page.locator("#histogram .ycount").text_content() == f"{top:,}"
    assert page.locator("#histogram text", has_text="activation").count() == 1
    rows = page.eval_on_selector_all(
        "#promoted tr, #suppressed tr",
        "trs => trs.map(tr => [tr.cells[0].textContent, tr.cells[1].textContent,"
        " parseFloat(getComputedStyle(tr.cells[2].firstChild).width)])",
    )
    want = v["promoted"] + v["suppressed"]
    lmax = max(abs(t["logit"]) for t in want)
    assert len(rows) == len(want) == 20
    for (tok, val, width), w in zip(rows, want):
        assert tok == token_label(w["token"]) and float(val) == pytest.approx(w["logit"], abs=0.006)
        assert width == pytest.approx(100 * abs(w["logit"]) / lmax, abs=0.15)
    e, mx = v["top"][0], v["max_act"]
    on = [k for k, a in enumerate(e.acts) if a > 0 or k == e.peak]
    shown = page.eval_on_selector_all(
        "#top .ex:first-child b", "bs => bs.map(b => [b.className, b.title, b.textContent])"
    )
    assert shown == [
        [
            " ".join(
                c for c in (f"s{level(e.acts[k], mx)}" if e.acts[k] > 0 else "", "peak" if k == e.peak else "") if c
            ),
            f"{e.acts[k]:.3f}",
            token_label(e.tokens[k]),
        ]
        for k in on
    ]


def test_page_script_draws_a_clt_latents_writes_chart():
    """A cross-layer latent's writes chart: the page carries the decoder norms and layers, page.js draws a bar
    per layer (height in proportion to its norm, hover title `layer L: norm`), the top norm and both layers."""
    from saelab.view.page_script import PAGE_JS, writes_chart

    targets = [{"layer": 3, "norm": 2.0}, {"layer": 4, "norm": 0.5}, {"layer": 5, "norm": 1.25}]
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        page.set_content(f"<body>{writes_chart({'targets': targets})}<script>{PAGE_JS}</script></body>")
        bars = page.eval_on_selector_all(
            "#writes-chart rect", "rs => rs.map(r => [+r.getAttribute('height'), r.querySelector('title').textContent])"
        )
        assert bars == [[70.0, "layer 3: 2"], [17.5, "layer 4: 0.5"], [43.8, "layer 5: 1.25"]]
        labels = page.eval_on_selector_all("#writes-chart text", "ts => ts.map(t => t.textContent)")
        assert labels == ["2", "0", "3", "layer", "5"]
        browser.close()


def test_browser_shows_a_runs_explanation_and_score(run_server, tmp_path):
    """cache -> explain -> score -> serve / dashboard: the explanation text and the embedding AUC with its
    chance level are on the feature page in Chromium, and the page's columns are laid out side by side."""
    from saelab.interpret.records import load_run
    from saelab.view.static_site import write_dashboard

    base, store, run, lat = run_server
    recs = load_run(run)
    j = lat[0]
    want_text = recs.explanations[j]["explanation"]
    want_auc = f"{recs.scores['embedding'][j]['metrics']['auc']:.3f}"
    out = write_dashboard(store, tmp_path / "dash", latents=lat, progress=False)
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for url in (f"{base}/sae/run_sae/feature/{j}", (out / "features" / f"{j}.html").as_uri()):
            page.goto(url)
            page.wait_for_selector("#title")
            assert page.locator("#explanation").inner_text() == want_text
            row = page.locator("#scores tr.score").first.inner_text()
            assert row.split("\t")[:4] == ["embedding", "auc", want_auc, "0.50"], row
            _columns_side_by_side(page)
            _charts_drawn(page, store.view(j))  # the app's inline script and the dashboard's page.js from disk
            for na in page.locator("#nearest .na").all():  # a subset dashboard: neighbours it did not write
                assert na.get_attribute("title") == "not in this dashboard"
        _shot(page, tmp_path, "feature_with_run")
        page.goto(base + "/")
        page.wait_for_selector("#sae option", state="attached")
        page.wait_for_function("document.getElementById('saeinfo').textContent.length > 0")
        assert page.locator("#saeinfo").inner_text().endswith(f"{len(lat)} explained")
        browser.close()


def test_browser_feature_navigation_and_html_404(server, tmp_path):
    """Arrow keys move to the previous / next feature; a missing page is an HTML page for a browser
    (JSON for the API); an empty search lists the densest features."""
    base, store = server
    code, body = _get(f"{base}/api/search?sae=app_sae&q=")
    dens = [r["density"] for r in json.loads(body)["results"]]
    assert code == 200 and len(dens) == min(50, store.d_sae) and dens == sorted(dens, reverse=True)
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        page.goto(f"{base}/sae/app_sae/feature/2")
        page.keyboard.press("ArrowRight")
        page.wait_for_function("document.getElementById('title').textContent.endsWith('feature 3')")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("document.getElementById('title').textContent.endsWith('feature 2')")
        page.goto(f"{base}/sae/app_sae/feature/0")
        assert page.locator("#prev").count() == 0 and page.locator("#next").count() == 1
        r = page.goto(f"{base}/sae/app_sae/feature/{store.d_sae}")
        assert r.status == 404 and page.locator("h1").inner_text() == "Not found"
        assert f"0..{store.d_sae - 1}" in page.locator("#detail").inner_text()
        r = page.goto(f"{base}/no/such/page")
        assert r.status == 404 and page.locator("h1").inner_text() == "Not found"
        browser.close()


def test_test_this_feature_on_your_own_text(server):
    """The served feature page colours the user's text by this feature's own activation, the same
    numbers as the SAE's encoder on the model's activations."""
    from saelab.models import collect_activations

    base, store = server
    text = "The cat sat on the mat. The dog sat on the log."
    code, body = _post(f"{base}/api/fire", {"sae": "app_sae", "text": text, "top": 1, "feature": 5})
    assert code == 200 and body["max_act"] == pytest.approx(float(store.max_act[5]))
    ids = encode_prompt(store.tok, text)
    act = collect_activations(store.model, ids, ["model.layers.1"])["model.layers.1"][0]
    want = store.sae.encode_raw(act).to_dense()[1:, 5]  # the sink position is left out
    assert [t["act"] for t in body["tokens"]] == pytest.approx(want.tolist(), abs=1e-5)
    assert _post(f"{base}/api/fire", {"sae": "app_sae", "text": text, "feature": store.d_sae})[0] == 400
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/sae/app_sae/feature/5")
        page.fill("#trytext", text)
        page.click("#trybtn")
        page.wait_for_selector("#trytokens b")
        titles = page.locator("#trytokens b").evaluate_all("bs => bs.map(b => parseFloat(b.title))")
        assert titles == pytest.approx(want.tolist(), abs=2e-3)
        assert "".join(page.locator("#trytokens b").all_inner_texts()) == text
        # clicking a top example puts its text in the box and shows this feature's activations on it
        ex = store.view(5)["top"][0]
        page.locator("#top .ex").first.click()
        page.wait_for_function(
            "document.getElementById('trytext').value.length > 0 && "
            "document.querySelectorAll('#trytokens b').length > 0"
        )
        assert page.locator("#trytext").input_value() == "".join(ex.tokens)
        # steer with this feature from its page: the unsteered text and the default sweep, values shown
        from saelab.features.steering import DEFAULT_STRENGTH, SWEEP

        page.fill("#steerprompt", "Once upon a time")
        page.click("#steerbtn")
        page.wait_for_function(
            f"document.querySelectorAll('#steerout p.steered').length == {1 + len(SWEEP)}", timeout=120000
        )
        rows = page.locator("#steerout p.steered").all_inner_texts()
        clean = store.tok.decode(
            generate(store.model, store.tok, encode_prompt(store.tok, "Once upon a time"), 30), skip_special_tokens=True
        )
        assert rows[0] == "unsteered: Once upon a time" + clean.replace("\n", "\u21b5")
        v1 = DEFAULT_STRENGTH * float(store.max_act[5])
        assert rows[SWEEP.index(1.0) + 1].startswith(f"\u00d71: clamp \u2192 {float(f'{v1:.3g}'):g}"[:14])
        # the home page's status line (issue 31): generations, tokens and time, the bar full
        done = page.locator("#steerstate").inner_text()
        assert done.startswith(f"done: {1 + len(SWEEP)} generations of up to 30 tokens")
        assert page.locator("#steerbar").evaluate("b => b.style.width") == "100%"
        assert errors == []
        browser.close()
