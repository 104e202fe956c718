"""Issue 31 item 7, steering you can read: a bad feature id gets a sentence (not pydantic's list); a relative
edit of a feature that never fired warns; the degenerate flag catches repeated sentences and very short
text; the feature page's steering panel has the home page's progress, Cancel and Enter; `serve` checks its
port before loading anything. And: no doc links to a file outside the repository."""

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from graph_fixture import serve

from saelab.cli import main
from saelab.features.steer import FeatureEdit, degenerate
from saelab.features.steering import SWEEP, SteeringRequest, never_fired, run_steering
from saelab.models import load_model
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.sinks import SinkConfig
from saelab.view.feature_store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
DEAD = 5  # a latent that never fires: its encoder column 0, its bias -100


@pytest.fixture(scope="module")
def app(tiny_model_dir, text_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae") / "steer_sae"
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=128, hookpoint="model.layers.1", k=8))  # as make_sae_folder
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
        sae.W_enc[:, DEAD] = 0.0
        sae.b_enc[DEAD] = -100.0
    sink = SinkConfig(first_positions=1, mask_special=True, norm_factor=5.0)
    save_sae(sae.eval(), folder, Provenance(str(tiny_model_dir), "tiny", str(text_corpus), context=64, sink=sink))
    lm = load_model(str(tiny_model_dir))
    store = FeatureStore.build(folder, tokens=2048, model=lm.model, tokenizer=lm.tokenizer, progress=False)
    assert store.max_act[DEAD] == 0 and store.max_act.max() > 0
    with serve([store]) as (base, api):
        yield base, api, store


def _post(url, obj):
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url, accept="application/json"):
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_degenerate_catches_repeated_sentences_and_very_short_text():
    # a 60-character sentence said twice: no short pattern, 12 distinct words of 31 (the old rules passed it)
    twice = " The cat sat on the mat and looked out of the window.\nThe cat sat on the mat and looked out of the window.\nThe"
    assert degenerate(twice) == "repeats the sentence 'the cat sat on the mat and looked out of the window.' (2 times)"
    assert degenerate(" I love cats. I love cats. I love").startswith("repeats the sentence 'i love cats.'")
    assert degenerate(" yourself.") == "very short (1 word)" and degenerate(" the end", 30) == "very short (2 words)"
    assert degenerate(" the end", 2) is None  # two tokens asked, two words given: not short
    for fluent in (
        "The server sends the reply to the client.",
        " a mix of both.\n\nThe weather today is a mix of both.",
        " the best places to eat in the city of Paris. I'm not just talking about the famous E",
    ):
        assert degenerate(fluent, 30) is None, fluent


def test_a_relative_edit_of_a_feature_that_never_fired_warns(app, tmp_path, capsys):
    base, _, store = app
    max_acts = torch.from_numpy(store.max_act.copy())
    live = int(store.max_act.argmax())
    edits = [FeatureEdit(DEAD, "clamp", 4.0, relative=True), FeatureEdit(live, "clamp", 1.0, relative=True)]
    (w,) = never_fired(edits, max_acts)
    assert w.startswith(f"feature {DEAD} never fired on the cached tokens (max activation 0): 4x its max")
    assert never_fired([FeatureEdit(DEAD, "clamp", 4.0)], max_acts) == []  # an absolute value does steer
    req = SteeringRequest(["Once upon a time"], edits, max_new_tokens=3)
    res = run_steering(req, store.model, store.tok, store.sae, max_acts)
    assert res.warnings == [w] and res.results[0]["warnings"] == [w]
    # the web app's job carries the sentence, and the feature's own page says it next to the panel
    code, body = _post(
        f"{base}/api/steer",
        {
            "sae": "steer_sae",
            "prompt": "Hi",
            "max_new_tokens": 2,
            "edits": [{"latent": DEAD, "value": 1, "relative": True}],
        },
    )
    assert code == 202
    for _ in range(300):
        j = json.loads(_get(f"{base}/api/jobs/{body['job']}")[1])
        if j["status"] == "done":
            break
        time.sleep(0.1)
    assert j["status"] == "done" and j["result"]["warnings"][0].startswith(f"feature {DEAD} never fired")
    assert 'id="neverfired"' in _get(f"{base}/sae/steer_sae/feature/{DEAD}")[1]
    assert 'id="neverfired"' not in _get(f"{base}/sae/steer_sae/feature/{live}")[1]
    # `saelab steer` says it before generating, and --json keeps it
    out = tmp_path / "steer.json"
    args = ["steer", str(store.sae_dir), "--prompt", "Hi", "--clamp", f"{DEAD}=2x", "--max-new-tokens", "2"]
    assert main(args + ["--tokens", "2048", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"saelab: warning: feature {DEAD} never fired on the cached tokens" in err
    assert json.loads(out.read_text())["warnings"][0].startswith(f"feature {DEAD} never fired")


@pytest.mark.parametrize(
    "latent,got", [(-1, "-1"), ("abc", '"abc"'), (None, "null"), (1.5, "1.5")], ids=["negative", "text", "null", "frac"]
)
def test_a_bad_feature_id_is_a_sentence(app, latent, got):
    base, _, store = app
    code, body = _post(
        f"{base}/api/steer", {"sae": "steer_sae", "prompt": "hi", "edits": [{"latent": latent, "value": 1}]}
    )
    assert code == 422 and body["detail"] == f"the feature id must be a whole number, 0 or more; got {got}"
    code, body = _post(f"{base}/api/steer", {"sae": "steer_sae", "edits": [{"latent": 1, "value": 1}]})
    assert code == 422 and body["detail"] == "the prompt is missing"
    code, body = _post(f"{base}/api/fire", {"sae": "steer_sae", "text": "x", "top": 0})
    assert code == 422 and body["detail"] == "the number of features per token must be >= 1; got 0"
    code, text = _get(f"{base}/sae/steer_sae/feature/abc", accept="text/html")  # a person's browser: a page
    assert code == 422 and "the feature id must be a whole number, 0 or more; got &quot;abc&quot;" in text


def test_serve_checks_its_port_before_loading_anything(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the folder does not exist: a server that loaded first would say so; the port is said first
        assert main(["serve", str(tmp_path / "no_such_sae"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"saelab: error: port {port} on 127.0.0.1 is in use (another server?); choose another --port"]
    from saelab.view.app_server import check_port

    check_port("127.0.0.1", port)  # free again: no error


def _md_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split()]


def test_docs_link_only_to_files_in_the_repository():
    """Every relative markdown link resolves to a file of the repository, and no doc names a `.md` file the
    repository lacks (docs/research/view.md named a DESIGN.md that never was in it)."""
    files = _md_files()
    names = {p.name for p in files}
    outputs = {"report.md"}  # what commands write (`saelab bench`, `saelab report`), not docs
    bad = []
    for f in files:
        text = f.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            path = (f.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{f.relative_to(ROOT)}: link {target}")
        for name in re.findall(r"(?<![\w/.-])([\w-]+\.md)\b", text):
            if name not in names and name not in outputs:
                bad.append(f"{f.relative_to(ROOT)}: names {name}")
    assert files and bad == []


def test_browser_feature_panel_has_progress_cancel_and_enter(app):
    """On a feature page, Enter in the prompt starts the job, the bar and status follow it, Cancel stops it;
    on the home page a feature id that is not a number is refused in words, and Enter starts a run."""
    from test_app_browser import _browser, _launch

    base, api, store = app
    state = api.state.saelab
    lock = state.lock(store)
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/sae/steer_sae/feature/3")
        assert page.locator("#steercancel").is_disabled()
        lock.acquire()  # the job waits at its first forward: running, token 0, until Cancel
        try:
            page.fill("#steerprompt", "Once upon a time")
            page.press("#steerprompt", "Enter")
            page.wait_for_function("document.getElementById('steerstate').textContent.startsWith('running')")
            assert page.locator("#steerstate").inner_text() == f"running: generation 1/{1 + len(SWEEP)}, token 0/30"
            assert page.locator("#steerbtn").is_disabled() and page.locator("#steercancel").is_enabled()
            page.click("#steercancel")
            for _ in range(100):
                if all(j.cancel.is_set() for j in state.jobs.values() if not j.finished):
                    break
                page.wait_for_timeout(50)
        finally:
            lock.release()
        page.wait_for_function("document.getElementById('steerstate').textContent === 'cancelled'")
        assert page.locator("#steercancel").is_disabled() and page.locator("#steerbtn").is_enabled()
        assert page.locator("#steerout p").count() == 0
        page.press("#steerprompt", "Enter")  # again, to the end: the bar full, the home page's status line
        page.wait_for_function("document.getElementById('steerstate').textContent.startsWith('done')", timeout=60000)
        assert page.locator("#steerstate").inner_text().startswith(f"done: {1 + len(SWEEP)} generations of up to 30")
        assert page.locator("#steerbar").evaluate("b => b.style.width") == "100%"
        assert page.locator("#steerout p.steered").count() == 1 + len(SWEEP)

        page.goto(base + "/")
        page.wait_for_selector("#sae option", state="attached")
        assert page.locator("#value").input_value() == "1"  # the default strength, not the placeholder @DEFAULT@
        page.fill("#latent", "abc")
        page.press("#latent", "Enter")
        page.wait_for_function("document.getElementById('steererr').textContent.length > 0")
        assert page.locator("#steererr").inner_text() == 'the feature id must be a whole number, 0 or more; got "abc"'
        page.fill("#latent", "3")
        page.fill("#ntok", "4")
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "/^(done|error)/.test(document.getElementById('steerstatus').textContent)", timeout=60000
        )
        assert page.locator("#steerstatus").inner_text().startswith("done"), page.locator("#steererr").inner_text()
        assert page.locator("#steererr").inner_text() == "" and page.locator(".variant").count() == len(SWEEP)
        assert errors == []
        browser.close()
