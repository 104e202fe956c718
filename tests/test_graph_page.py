"""The attribution-graph pages of `saelab serve --graphs DIR` over a real uvicorn server on loopback: the
list, a graph's JSON annotated from a served SAE, bad slugs / non-graph files / path traversal, saving pins
and supernodes into qParams, interventions (through a stand-in for saelab.circuits.interventions), graph jobs
in the one job queue (progress, cancel, its bound); then Chromium: the nodes and links drawn are exactly the
file's, hover shows the explanation / clerp and top examples, pins and Save write qParams.pinnedIds back.

The graph file is hand-made in circuit-tracer's format (circuit_tracer/utils/create_graph_files.py,
frontend/graph_models.py): features `{layer}_{feature}_{pos}`, errors `0_{layer}_{pos}`, tokens
`E_{id}_{pos}`, logits `{n_layers + 1}_{id}_{pos}`. Browser parts skip only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_app_browser import _browser, _get, _launch, _post, _shot
from view_helpers import make_sae_folder

from saelab.view.web_app import MAX_PENDING, create_app

N_LAYERS = 4  # the tiny Llama's
TOKENS = [1, 504, 3258, 314]  # ids of the prompt's 4 positions
EXPL = "<b>cats</b> and dogs"  # the served explanation of layer 1's feature 2 (markup shown as text)


def _feature(layer, fid, pos, act, infl):
    return {
        "node_id": f"{layer}_{fid}_{pos}",
        "feature": (layer + fid) * (layer + fid + 1) // 2 + fid,
        "layer": str(layer),
        "ctx_idx": pos,
        "feature_type": "cross layer transcoder",
        "jsNodeId": f"{layer}_{fid}-0",
        "clerp": "",
        "influence": infl,
        "activation": act,
    }


def graph_json(slug="g1") -> dict:
    """A small pruned graph: tokens -> features of layers 0, 1, 3 (and one error node) -> two logits."""
    nodes = [
        {"node_id": f"E_{t}_{p}", "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding",
         "jsNodeId": f"E_{t}-{p}", "clerp": "", "influence": 0.9}
        for p, t in enumerate(TOKENS)
    ]  # fmt: skip
    nodes += [
        _feature(0, 7, 2, 1.5, 0.3),
        _feature(1, 2, 3, 3.25, 0.1),  # explained by the served SAE (layer 1)
        _feature(1, 5, 3, 0.75, 0.5),
        _feature(3, 11, 3, 2.0, 0.2) | {"clerp": "says a colour"},  # no SAE served for layer 3: its clerp
        {"node_id": "0_2_3", "feature": -1, "layer": "2", "ctx_idx": 3, "feature_type": "mlp reconstruction error",
         "jsNodeId": "2_3-0", "clerp": "", "influence": 0.4},
    ]  # fmt: skip
    for k, (tid, p) in enumerate(((42, 0.6), (99, 0.3))):
        nodes.append(
            {"node_id": f"{N_LAYERS + 1}_{tid}_3", "feature": tid, "layer": str(N_LAYERS + 1), "ctx_idx": 3,
             "feature_type": "logit", "token_prob": p, "is_target_logit": k == 0, "jsNodeId": f"L_{tid}-3",
             "clerp": f'Output " x{tid}" (p={p:.3f})'}
        )  # fmt: skip
    links = [
        ("E_3258_2", "0_7_2", 1.25),
        ("E_314_3", "1_2_3", 2.5),
        ("0_7_2", "1_5_3", -0.75),
        ("1_2_3", "3_11_3", 0.5),
        ("1_5_3", "3_11_3", -1.0),
        ("0_2_3", "3_11_3", 0.125),
        ("3_11_3", "5_42_3", 3.0),
        ("1_2_3", "5_99_3", -2.0),
        ("E_1_0", "5_42_3", 0.0625),
    ]
    return {
        "metadata": {"slug": slug, "scan": "tiny-plt", "transcoder_list": [], "prompt_tokens": ["<s>", "The", " cat", " sat"],
                     "prompt": "The cat sat", "node_threshold": 0.8, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": w} for s, t, w in links],
    }  # fmt: skip


def write_graphs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "g1.json").write_text(json.dumps(graph_json("g1"), indent=2))
    (root / "run2").mkdir()
    (root / "run2" / "g2.json").write_text(json.dumps(graph_json("g2")))
    (root / "run2" / "graph.json").write_text(json.dumps({"format": "saelab-graph"}))  # saelab's meta: not listed
    (root / "notgraph.json").write_text(json.dumps({"hello": [1, 2]}))
    (root / "broken.json").write_text("{not json")
    return root


@contextlib.contextmanager
def _serve(stores, **graph_opts):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = create_app(stores, **graph_opts)
    srv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", api
    finally:
        srv.should_exit = True
        th.join(timeout=10)


class FakeTok:
    """Enough tokenizer for the graph routes: ids <-> 'tN' strings."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + len(w) for w in text.split()]}

    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


@pytest.fixture()
def graphs(tmp_path):
    return write_graphs(tmp_path / "graphs")


@pytest.fixture()
def bare(graphs):
    """Graph pages only: no SAE served, no replacement."""
    with _serve([], graphs=graphs) as (base, _):
        yield base, graphs


@pytest.fixture()
def with_model(graphs):
    """Graph pages with a stand-in model (a fake tokenizer; the circuits calls are replaced in each test)."""
    lm = types.SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=FakeTok())
    with _serve([], graphs=graphs, replacement="REPL", lm=lm) as (base, _):
        yield base, graphs


def test_list_and_graph_json(bare):
    base, root = bare
    code, body = _get(f"{base}/api/graphs")
    rows = {r["slug"]: r for r in json.loads(body)["graphs"]}
    assert code == 200 and sorted(rows) == ["broken", "g1", "g2", "notgraph"]  # graph.json (saelab meta) not listed
    assert rows["g1"] == {"slug": "g1", "file": "g1.json", "prompt": "The cat sat", "scan": "tiny-plt",
                          "n_nodes": 11, "n_links": 9, "n_pinned": 0}  # fmt: skip
    assert rows["notgraph"]["error"].startswith("notgraph.json: it has no 'metadata'")
    assert "not a circuit-tracer / Neuronpedia graph JSON" in rows["notgraph"]["error"]
    assert rows["broken"]["error"].startswith("broken.json is not valid JSON")
    assert str(root) not in json.dumps(rows)  # errors name the file, never the server's folders
    code, body = _get(f"{base}/api/graph/g2")
    g = json.loads(body)
    want = graph_json("g2")
    assert code == 200 and [n["node_id"] for n in g["nodes"]] == [n["node_id"] for n in want["nodes"]]
    assert g["links"] == want["links"] and g["can_run"] is False
    assert [n["activation"] for n in g["nodes"]] == [n.get("activation") for n in want["nodes"]]
    code, body = _get(f"{base}/graphs")
    assert code == 200 and 'id="computebtn"' in body
    code, body = _get(f"{base}/graph/g1")
    assert code == 200 and '<svg id="graph"' in body


def test_bad_slug_non_graph_and_path_traversal(bare):
    base, root = bare
    code, body = _get(f"{base}/api/graph/nope")
    assert code == 404 and "no graph 'nope'" in json.loads(body)["detail"]
    code, body = _get(f"{base}/api/graph/notgraph")
    assert code == 400 and json.loads(body)["detail"].startswith("notgraph.json: it has no 'metadata' object")
    code, body = _get(f"{base}/api/graph/broken")
    assert code == 400 and json.loads(body)["detail"].startswith("broken.json is not valid JSON")
    (root / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    code, body = _get(f"{base}/api/graph/binary")
    assert code == 400 and json.loads(body)["detail"] == "binary.json is not a graph: not UTF-8 text"
    import urllib.request

    req = urllib.request.Request(f"{base}/graph/notgraph", headers={"Accept": "text/html"})
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("a file that is not a graph opened as a page")
    except urllib.error.HTTPError as e:
        page = e.read().decode()
        assert e.code == 400 and "notgraph.json: it has no" in page and "<h1>Error 400</h1>" in page
    secret = root.parent / "secret.json"
    secret.write_text(json.dumps(graph_json("secret")))
    for path in ["/graph/..%2Fsecret", "/api/graph/..%2Fsecret", "/api/graph/%2e%2e%2fsecret", "/graph/../secret",
                 "/api/graph/run2%2Fg2", f"/api/graph/{secret}", "/api/graph/graph", "/api/graph/.g1"]:  # fmt: skip
        code, body = _get(base + path)
        assert code == 404, path
        assert "prompt_tokens" not in body


def test_save_writes_qparams_atomically_and_checks_ids(bare):
    base, root = bare
    before = json.loads((root / "g1.json").read_text())
    sn = [["animals", "1_2_3", "1_5_3"]]
    code, body = _post(f"{base}/api/graph/g1/state", {"pinnedIds": ["1_2_3", "0_2_3", "1_5_3"], "supernodes": sn})
    assert code == 200
    after = json.loads((root / "g1.json").read_text())
    assert after["qParams"] == {"pinnedIds": ["1_2_3", "0_2_3", "1_5_3"], "supernodes": sn, "linkType": "both",
                                "clickedId": "", "sg_pos": ""}  # fmt: skip
    assert {k: v for k, v in after.items() if k != "qParams"} == {k: v for k, v in before.items() if k != "qParams"}
    assert json.loads(_get(f"{base}/api/graph/g1")[1])["qParams"]["pinnedIds"] == ["1_2_3", "0_2_3", "1_5_3"]
    for bad, why in (
        ({"pinnedIds": ["9_9_9"]}, "not in the graph"),
        ({"pinnedIds": [], "supernodes": [["x"]]}, "a supernode is"),
        ({"pinnedIds": [], "supernodes": [["", "1_2_3"]]}, "a supernode is"),
        ({"pinnedIds": [], "supernodes": [["x", "nope"]]}, "names ids not in the graph"),
    ):
        code, body = _post(f"{base}/api/graph/g1/state", bad)
        assert code == 400 and why in body["detail"], bad
    assert json.loads((root / "g1.json").read_text()) == after  # refused saves change nothing
    assert _post(f"{base}/api/graph/notgraph/state", {"pinnedIds": []})[0] == 400
    assert json.loads((root / "notgraph.json").read_text()) == {"hello": [1, 2]}
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_intervene_and_compute_need_the_model(bare):
    base, _ = bare
    code, body = _post(f"{base}/api/graph/g1/intervene", {"edits": [{"node_id": "1_2_3", "op": "ablate"}]})
    assert code == 400 and "--replacement" in body["detail"]
    code, body = _post(f"{base}/api/graphs/compute", {"prompt": "hello"})
    assert code == 400 and "--replacement" in body["detail"]


def test_intervene_calls_interventions_with_graph_edits(with_model, monkeypatch):
    base, _ = with_model
    monkeypatch.setitem(sys.modules, "saelab.circuits.interventions", None)  # the module is missing
    code, body = _post(f"{base}/api/graph/g1/intervene", {"edits": [{"node_id": "1_2_3", "op": "ablate"}]})
    assert code == 501 and "not available" in body["detail"]
    calls = []
    before = torch.tensor([[0.0] * 8, [0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0]])  # [n_pos=2, vocab=8]: last row used
    after = torch.tensor([0.0, 1.5, 1.0, 0.0, 0.0, 0.0, 4.0, 0.0])

    def intervene(model, replacement, tokens, edits, mode):
        calls.append((replacement, tokens.tolist(), edits, mode))
        return types.SimpleNamespace(logits_before=before, logits_after=after)

    monkeypatch.setitem(sys.modules, "saelab.circuits.interventions", types.SimpleNamespace(intervene=intervene))
    edits = [{"node_id": "1_2_3", "op": "scale", "value": 2.5}, {"node_id": "0_7_2", "op": "clamp", "value": -1}]
    code, body = _post(f"{base}/api/graph/g1/intervene", {"edits": edits})
    assert code == 200, body
    assert calls == [("REPL", TOKENS, [(1, 3, 2, "scale", 2.5), (0, 2, 7, "clamp", -1.0)], "replacement")]
    pb, pa = before[-1].softmax(-1), after.softmax(-1)
    assert [r["id"] for r in body["before"][:3]] == [1, 6, 2] and [r["id"] for r in body["after"][:2]] == [6, 1]
    assert body["before"][0]["prob"] == pytest.approx(float(pb[1])) and body["after"][0]["token"] == "t6"
    assert body["before"][0]["prob_after"] == pytest.approx(float(pa[1]))
    for bad, code_want in (
        ({"edits": [{"node_id": "0_2_3", "op": "ablate"}]}, 400),  # an error node, not a feature
        ({"edits": [{"node_id": "E_1_0", "op": "ablate"}]}, 400),
        ({"edits": [{"node_id": "1_2_3", "op": "explode"}]}, 422),
        ({"edits": []}, 422),
    ):
        assert _post(f"{base}/api/graph/g1/intervene", bad)[0] == code_want, bad


def test_compute_job_progress_cancel_and_bound(with_model, monkeypatch):
    from saelab.view import graph_routes

    base, root = with_model
    gate = threading.Event()

    def compute(model, replacement, tokens, prompt, out, slug, progress):
        assert tokens.tolist() == [1] + [10 + len(w) for w in prompt.split()]
        for k in range(400):
            progress(f"batch {k + 1}/400")
            if gate.is_set() or "quick" in prompt:
                break
            time.sleep(0.02)
        out.mkdir()
        (out / f"{slug}.json").write_text(json.dumps(graph_json(slug)))
        return out / f"{slug}.json"

    monkeypatch.setattr(graph_routes, "compute_graph", compute)
    code, body = _post(f"{base}/api/graphs/compute", {"prompt": "word " * 70})
    assert code == 400 and "limit is 64" in body["detail"]
    code, body = _post(f"{base}/api/graphs/compute", {"prompt": "x", "slug": "g1"})
    assert code == 400 and "taken" in body["detail"]
    jobs = []
    for _ in range(MAX_PENDING):
        code, body = _post(f"{base}/api/graphs/compute", {"prompt": "The cat sat"})
        assert code == 202
        jobs.append(body["job"])
    code, body = _post(f"{base}/api/graphs/compute", {"prompt": "The cat sat"})
    assert code == 429 and "already queued or running" in body["detail"]
    for _ in range(100):
        j = json.loads(_get(f"{base}/api/jobs/{jobs[0]}")[1])
        if j["message"].startswith("batch"):
            break
        time.sleep(0.05)
    assert j["status"] == "running" and j["kind"] == "graph" and j["message"].startswith("batch ")
    for job in jobs:
        assert _post(f"{base}/api/jobs/{job}/cancel", {})[0] == 200
    for job in jobs:
        for _ in range(200):
            j = json.loads(_get(f"{base}/api/jobs/{job}")[1])
            if j["status"] == "cancelled":
                break
            time.sleep(0.05)
        assert j["status"] == "cancelled" and j["result"] is None
    assert not (root / "the-cat-sat").exists()
    code, body = _post(f"{base}/api/graphs/compute", {"prompt": "quick one", "slug": "mine"})
    assert code == 202
    for _ in range(200):
        j = json.loads(_get(f"{base}/api/jobs/{body['job']}")[1])
        if j["status"] == "done":
            break
        time.sleep(0.05)
    assert j["result"]["slug"] == "mine" and j["result"]["url"] == "/graph/mine"
    assert "mine" in [r["slug"] for r in json.loads(_get(f"{base}/api/graphs")[1])["graphs"]]


# ---------------------------------------------------------------- with a served SAE, and in Chromium


@pytest.fixture(scope="module")
def served(tiny_model_dir, text_corpus, tmp_path_factory):
    from saelab.models import load_model
    from saelab.view.feature_store import FeatureStore

    folder = make_sae_folder(tmp_path_factory.mktemp("sae") / "l1_sae", tiny_model_dir, text_corpus)
    (folder / "explanations.jsonl").write_text(json.dumps({"latent": 2, "explanation": EXPL}) + "\n")
    lm = load_model(str(tiny_model_dir))
    store = FeatureStore.build(folder, tokens=4096, model=lm.model, tokenizer=lm.tokenizer, progress=False)
    root = write_graphs(tmp_path_factory.mktemp("g") / "graphs")
    with _serve([store], graphs=root) as (base, _):
        yield base, store, root


def test_feature_nodes_get_the_served_explanation(served):
    base, store, _ = served
    g = json.loads(_get(f"{base}/api/graph/g1")[1])
    by = {n["node_id"]: n for n in g["nodes"]}
    assert by["1_2_3"]["explanation"] == EXPL and by["1_2_3"]["feature_url"] == "/sae/l1_sae/feature/2"
    assert by["1_5_3"]["explanation"] is None and by["1_5_3"]["feature_api"] == "/api/sae/l1_sae/feature/5"
    assert "feature_url" not in by["0_7_2"] and "feature_url" not in by["3_11_3"]  # no SAE served there
    assert "feature_url" not in by["0_2_3"] and "feature_url" not in by["E_1_0"]


def test_browser_draws_the_file_hover_pin_and_save(served, tmp_path):
    base, store, root = served
    want = json.loads((root / "g1.json").read_text())
    with _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/graphs")
        page.wait_for_selector("#graphs a.graphlink")
        assert page.locator("#graphs a.graphlink").all_inner_texts() == ["g1", "g2"]
        page.click("#graphs a.graphlink >> text=g1")
        page.wait_for_selector("body[data-ready='1']")
        ids = page.locator("#graph .node").evaluate_all("es => es.map(e => e.dataset.id)")
        assert Counter(ids) == Counter(n["node_id"] for n in want["nodes"])
        pairs = page.locator("#graph .link").evaluate_all("es => es.map(e => [e.dataset.source, e.dataset.target])")
        assert Counter(map(tuple, pairs)) == Counter((e["source"], e["target"]) for e in want["links"])
        widths = {
            (s, t): float(w)
            for s, t, w in page.locator("#graph .link").evaluate_all(
                "es => es.map(e => [e.dataset.source, e.dataset.target, e.getAttribute('stroke-width')])"
            )
        }
        assert widths[("3_11_3", "5_42_3")] == pytest.approx(4.0) and widths[("1_2_3", "5_99_3")] == pytest.approx(
            0.3 + 3.7 * 2 / 3, abs=0.01
        )
        cols = page.locator("#graph text.col").all_text_contents()
        assert cols == want["metadata"]["prompt_tokens"]
        # rows: embeddings at the bottom, logits at the top, layer 1 below layer 3
        y = {
            i: page.locator(f'#graph [data-id="{i}"]').bounding_box()["y"]
            for i in ("E_1_0", "1_2_3", "3_11_3", "5_42_3")
        }
        assert y["E_1_0"] > y["1_2_3"] > y["3_11_3"] > y["5_42_3"]
        x = {i: page.locator(f'#graph [data-id="{i}"]').bounding_box()["x"] for i in ("E_1_0", "E_3258_2", "E_314_3")}
        assert x["E_1_0"] < x["E_3258_2"] < x["E_314_3"]

        page.hover('#graph [data-id="1_2_3"]')
        page.wait_for_function("document.getElementById('clerp').textContent.length > 0")
        assert page.locator("#clerp").inner_text() == EXPL  # the served explanation, as text
        assert page.locator("#featurelink").get_attribute("href") == "/sae/l1_sae/feature/2"
        page.wait_for_selector("#examples .ex")
        ex = store.view(2)["top"][0]
        shown = "".join(ex.tokens).replace("\n", "\u23ce").replace("\t", "\u2192").replace("\r", "\u21b5")
        assert page.locator("#examples .ex").first.text_content() == shown
        page.hover('#graph [data-id="3_11_3"]')
        page.wait_for_function("document.getElementById('clerp').textContent === 'says a colour'")
        page.hover('#graph [data-id="5_42_3"]')
        assert page.locator("#clerp").inner_text() == 'Output " x42" (p=0.600)'
        assert page.locator("#graph .link.hl").count() == 2
        with page.expect_popup() as pop:  # a click on a feature opens its feature page
            page.click('#graph [data-id="1_5_3"]')
        pop.value.wait_for_selector("#title")
        assert pop.value.url == base + "/sae/l1_sae/feature/5" and pop.value.locator("#title").inner_text().endswith(
            "feature 5"
        )
        pop.value.close()

        # pin: the button, and shift-click; group into a supernode; Save writes qParams
        page.hover('#graph [data-id="1_2_3"]')
        page.click("#pinbtn")
        page.click('#graph [data-id="0_2_3"]', modifiers=["Shift"])
        assert page.locator("#pinned li").evaluate_all("es => es.map(e => e.dataset.id)") == ["1_2_3", "0_2_3"]
        assert page.locator("#graph .node.pinned").count() == 2
        page.check('#pinned li[data-id="1_2_3"] input')
        page.check('#pinned li[data-id="0_2_3"] input')
        page.fill("#snname", "cat path")
        page.click("#groupbtn")
        assert page.locator("#supernodes li").inner_text().startswith("cat path: 1_2_3, 0_2_3")
        page.click("#savebtn")
        page.wait_for_function("document.getElementById('savestatus').textContent === 'saved'")
        q = json.loads((root / "g1.json").read_text())["qParams"]
        assert q["pinnedIds"] == ["1_2_3", "0_2_3"] and q["supernodes"] == [["cat path", "1_2_3", "0_2_3"]]
        # an intervention without --replacement says why
        page.click("#ivbtn")
        page.wait_for_function("document.getElementById('iverr').textContent.length > 0")
        assert "--replacement" in page.locator("#iverr").inner_text()
        _shot(page, tmp_path, "graph_page")
        # reload: the saved pins come back from the file
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#pinned li").count() == 2 and page.locator("#supernodes li").count() == 1
        assert errors == []
        browser.close()


def test_saved_file_is_still_circuit_tracers_format(bare):
    """The fixture and the file after Save parse with circuit-tracer's own schema (frontend/graph_models.py
    Model), run in its virtualenv when it is installed: their viewer opens what the page saves."""
    import os
    import subprocess

    ct = Path(os.environ["SAELAB_CACHE"]) / "venvs" / "circuit-tracer" / "bin" / "python"
    if not ct.exists():
        pytest.skip(f"circuit-tracer's virtualenv is absent ({ct})")
    base, root = bare
    code, _ = _post(f"{base}/api/graph/g1/state", {"pinnedIds": ["1_2_3"], "supernodes": [["sn", "1_2_3", "E_1_0"]]})
    assert code == 200
    check = (
        "import sys; from circuit_tracer.frontend.graph_models import Model; "
        "m = Model.model_validate_json(open(sys.argv[1]).read()); "
        "print(len(m.nodes), len(m.links), m.qParams.pinnedIds, m.qParams.supernodes)"
    )
    out = subprocess.run([str(ct), "-c", check, str(root / "g1.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["11", "9", "['1_2_3']", "[['sn',", "'1_2_3',", "'E_1_0']]"]


def big_graph(n_feat=40, seed=0) -> dict:
    """Many features in one cell (the page wraps them onto extra lines) and random links between layers."""
    import random

    rnd = random.Random(seed)
    g = graph_json("big")
    extra = [_feature(layer, 100 + k, 3, 1.0, 0.5) for layer in (0, 1, 2) for k in range(n_feat)]
    g["nodes"] += extra
    for a in extra:
        for b in rnd.sample(extra, 3):
            if int(a["layer"]) < int(b["layer"]):
                g["links"].append({"source": a["node_id"], "target": b["node_id"], "weight": rnd.uniform(-2, 2)})
    return g


def test_browser_draws_every_node_of_a_crowded_graph(tmp_path):
    root = tmp_path / "graphs"
    root.mkdir()
    g = big_graph()
    (root / "big.json").write_text(json.dumps(g))
    with _serve([], graphs=root) as (base, _), _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(base + "/graph/big")
        page.wait_for_selector("body[data-ready='1']")
        drawn = page.locator("#graph .node").evaluate_all(
            "es => es.map(e => [e.dataset.id, e.getBoundingClientRect().x, e.getBoundingClientRect().y])"
        )
        assert Counter(d[0] for d in drawn) == Counter(n["node_id"] for n in g["nodes"])
        assert len({(round(x), round(y)) for _, x, y in drawn}) == len(drawn)  # no two nodes on one spot
        pairs = page.locator("#graph .link").evaluate_all("es => es.map(e => [e.dataset.source, e.dataset.target])")
        assert Counter(map(tuple, pairs)) == Counter((e["source"], e["target"]) for e in g["links"])
        _shot(page, tmp_path, "graph_crowded")
        browser.close()
