"""The graph page in Chromium (Debian's, through Playwright; skipped only when /usr/bin/chromium is absent):
the nodes and links drawn are exactly the graph file's, rows by layer and columns by position, hover shows the
served explanation (or the node's clerp) and top examples, a click opens the feature page, pins and supernodes
go to the subgraph panel and Save writes them into the file's qParams; a crowded graph and a graph the
circuits stage computed and wrote (attribute -> prune -> write_graph_json) are drawn node for node."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from graph_fixture import EXPL, big_graph, serve, write_graphs
from test_app_browser import _browser, _get, _launch, _shot
from view_helpers import make_sae_folder


@pytest.fixture(scope="module")
def served(tiny_model_dir, text_corpus, tmp_path_factory):
    """Layer 1's transcoder (from a tiny PLT set, explained) and a residual-stream SAE at layer 1 (also
    explained, served first: its latents are not the graph's features and must not be used)."""
    from circuit_helpers import tiny_plt

    from saelab.models import load_model
    from saelab.view.feature_store import FeatureStore

    resid = make_sae_folder(tmp_path_factory.mktemp("sae") / "resid_sae", tiny_model_dir, text_corpus)
    (resid / "explanations.jsonl").write_text(
        json.dumps({"latent": 2, "explanation": "residual, not a graph feature"}) + "\n"
    )
    plt = tiny_plt(tiny_model_dir, tmp_path_factory.mktemp("plt") / "plt", n=128, k=8, corpus=text_corpus)
    l1 = plt / "layer1"
    (l1 / "explanations.jsonl").write_text(json.dumps({"latent": 2, "explanation": EXPL}) + "\n")
    lm = load_model(str(tiny_model_dir))
    stores = [
        FeatureStore.build(d, tokens=4096, model=lm.model, tokenizer=lm.tokenizer, name=name, progress=False)
        for d, name in ((resid, "resid_sae"), (l1, "l1_sae"))
    ]
    root = write_graphs(tmp_path_factory.mktemp("g") / "graphs")
    with serve(stores, graphs=root) as (base, _):
        yield base, stores[1], root


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


def test_browser_draws_every_node_of_a_crowded_graph(tmp_path):
    root = tmp_path / "graphs"
    root.mkdir()
    g = big_graph()
    (root / "big.json").write_text(json.dumps(g))
    with serve([], graphs=root) as (base, _), _browser() as pw:
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


def test_a_graph_of_150k_links_opens_with_its_strongest_5000(tmp_path):
    """circuit-tracer's default pruning keeps 100k+ links (132,777 for docs/ATTRIBUTION.md's example): the page
    opens (no `Math.max(...links)` past the call-argument limit), draws the 5,000 strongest, says so, and
    ?links=N draws the N strongest exactly."""
    import random

    root = tmp_path / "graphs"
    root.mkdir()
    g = big_graph()
    feats = [n["node_id"] for n in g["nodes"] if n["feature_type"] == "cross layer transcoder"]
    rnd = random.Random(1)
    g["links"] += [
        {"source": rnd.choice(feats), "target": rnd.choice(feats), "weight": rnd.uniform(-1, 1)} for _ in range(150_000)
    ]
    (root / "big.json").write_text(json.dumps(g))
    strongest = sorted(g["links"], key=lambda e: abs(e["weight"]))
    with serve([], graphs=root) as (base, _), _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/graph/big")
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        assert not errors
        assert page.locator("#graph .link").count() == 5000
        assert f"the 5000 strongest of {len(g['links'])} links" in page.locator("#prompt").inner_text()
        page.goto(base + "/graph/big?links=7")
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        pairs = page.locator("#graph .link").evaluate_all("es => es.map(e => [e.dataset.source, e.dataset.target])")
        assert Counter(map(tuple, pairs)) == Counter((e["source"], e["target"]) for e in strongest[-7:])
        browser.close()


def test_a_graph_the_circuits_stage_wrote_is_drawn_node_for_node(tiny_model_dir, tmp_path):
    """attribute (the core) -> prune_graph -> write_graph_json (circuits/neuronpedia.py) on a tiny random PLT
    set: the page reads that file, its feature nodes map back to the graph's (layer, position, id), its
    token nodes give back the prompt's ids, and Chromium draws exactly its nodes and links."""
    import torch
    from circuit_helpers import tiny_plt

    from saelab.circuits.attribution import attribute
    from saelab.circuits.neuronpedia import write_graph_json
    from saelab.circuits.prune import prune_graph
    from saelab.features.steer import encode_prompt
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement
    from saelab.view.graph_files import load_view_graph
    from saelab.view.graph_routes import feature_of, graph_tokens

    # 256 features per layer: no layer-0 feature id below 4 fires where an error node is kept, so circuit-
    # tracer's ids do not collide (feature `0_F_P` = error `0_L_P` when F = L; see the xfail test below)
    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "plt", n=256, k=4))
    lm = load_model(str(tiny_model_dir))
    ids = encode_prompt(lm.tokenizer, "The cat sat on the")[0]
    graph = attribute(lm.model, rep, ids, progress=False, tokenizer=lm.tokenizer)
    root = tmp_path / "graphs"
    path = write_graph_json(graph, prune_graph(graph), root / "cat", "cat", "tiny-plt")
    g = load_view_graph(path)
    assert len({n["node_id"] for n in g["nodes"]}) == len(g["nodes"])
    assert torch.equal(graph_tokens(g, lm.tokenizer), ids)
    active = {tuple(r) for r in graph.active_features[graph.selected_features].tolist()}
    feats = [feature_of(n) for n in g["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(f in active for f in feats)
    with serve([], graphs=root) as (base, _), _browser() as pw:
        code, body = _get(f"{base}/api/graphs")
        assert code == 200 and [r["slug"] for r in json.loads(body)["graphs"]] == ["cat"]
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/graph/cat")
        page.wait_for_selector("body[data-ready='1']")
        ids_drawn = page.locator("#graph .node").evaluate_all("es => es.map(e => e.dataset.id)")
        assert Counter(ids_drawn) == Counter(n["node_id"] for n in g["nodes"])
        pairs = page.locator("#graph .link").evaluate_all("es => es.map(e => [e.dataset.source, e.dataset.target])")
        assert Counter(map(tuple, pairs)) == Counter((e["source"], e["target"]) for e in g["links"])
        assert page.locator("#graph text.col").count() == len(ids)
        _shot(page, tmp_path, "graph_computed")
        assert errors == []
        browser.close()


def test_a_graph_whose_ids_collide_still_opens(tiny_model_dir, tmp_path):
    """circuit-tracer names layer-0 feature F at P and the error node of layer F at P both `0_F_P`; we write the
    error as `0_F_P_error`, so both nodes reach the page."""
    from circuit_helpers import tiny_plt

    from saelab.circuits.attribution import attribute
    from saelab.circuits.neuronpedia import write_graph_json
    from saelab.circuits.prune import prune_graph
    from saelab.features.steer import encode_prompt
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement
    from saelab.view.graph_files import load_view_graph

    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "plt", n=32, k=4))
    lm = load_model(str(tiny_model_dir))
    graph = attribute(lm.model, rep, encode_prompt(lm.tokenizer, "The dog")[0], progress=False)
    path = write_graph_json(graph, prune_graph(graph), tmp_path / "g", "dog", "tiny-plt")
    ids = [n["node_id"] for n in json.loads(path.read_text())["nodes"]]
    assert "0_1_2" in ids and "0_1_2_error" in ids and len(set(ids)) == len(ids)  # the collision, resolved
    assert len(load_view_graph(path)["nodes"]) == len(ids)


def test_serve_command_with_graphs(served):
    """`saelab serve SAE --graphs DIR` as a user runs it: a real process answers /api/graphs and /graph/g1."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error

    _, store, root = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "saelab.cli", "serve", str(store.sae_dir), "--tokens", "4096", "--graphs", str(root)]
    proc = subprocess.Popen(cmd + ["--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = None
        for _ in range(600):
            if proc.poll() is not None:
                break
            try:
                code, body = _get(f"http://127.0.0.1:{port}/api/graphs")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "server did not start"
        assert [r["slug"] for r in json.loads(body)["graphs"] if "error" not in r] == ["g1", "g2"]
        assert _get(f"http://127.0.0.1:{port}/graph/g1")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_browser_runs_an_intervention(tmp_path, monkeypatch):
    """Pin two features, check them, run "scale by 0": the page sends their (layer, position, id) edits and
    shows the top logits before / after and the features that moved (a stand-in for circuits.interventions)."""
    import sys
    import types

    import torch
    from graph_fixture import FakeTok

    calls = []

    def intervene(model, replacement, tokens, edits, mode):
        calls.append(edits)
        before, after = torch.zeros(8), torch.zeros(8)
        before[3], after[5] = 2.0, 3.0
        moved = [{"layer": 3, "position": 3, "feature": 11, "before": 2.0, "after": 0.25}]
        return types.SimpleNamespace(logits_before=before, logits_after=after, top_changed=lambda n: moved)

    monkeypatch.setitem(sys.modules, "saelab.circuits.interventions", types.SimpleNamespace(intervene=intervene))
    root = write_graphs(tmp_path / "graphs")
    model = torch.nn.Linear(1, 1)
    model.get_input_embeddings = lambda: torch.nn.Embedding(4000, 1)
    lm = types.SimpleNamespace(model=model, tokenizer=FakeTok())
    with serve([], graphs=root, replacement="REPL", lm=lm) as (base, _), _browser() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(base + "/graph/g1")
        page.wait_for_selector("body[data-ready='1']")
        page.click('#graph [data-id="1_2_3"]')  # no feature page served: a click pins
        page.click('#graph [data-id="0_7_2"]')
        page.check('#pinned li[data-id="1_2_3"] input')
        page.check('#pinned li[data-id="0_7_2"] input')
        page.select_option("#ivop", "scale")
        page.fill("#ivvalue", "0")
        page.click("#ivbtn")
        page.wait_for_selector("#ivfeatures tr")
        assert calls == [[(1, 3, 2, "scale", 0.0), (0, 2, 7, "scale", 0.0)]]
        assert page.locator("#ivbefore tr").first.inner_text().split("\t")[0] == "t3"
        assert page.locator("#ivafter tr").first.inner_text().split("\t")[0] == "t5"
        assert page.locator("#ivfeatures tr.ingraph").inner_text().startswith("3_11_3")
        assert page.locator("#iverr").inner_text() == ""
        _shot(page, tmp_path, "graph_intervention")
        browser.close()
