"""The attribution-graph pages of `saelab serve --graphs DIR` over a real uvicorn server on loopback: the
list, bad slugs / non-graph files / path traversal, saving pins and supernodes into qParams (still circuit-
tracer's format), interventions (through a stand-in for saelab.circuits.interventions), graph jobs in the one
job queue (progress, cancel, its bound). The browser half is tests/test_graph_browser.py."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from graph_fixture import TOKENS, FakeTok, graph_json, serve, write_graphs
from test_app_browser import _get, _post

from saelab.view.web_app import MAX_PENDING


@pytest.fixture()
def graphs(tmp_path):
    return write_graphs(tmp_path / "graphs")


@pytest.fixture()
def bare(graphs):
    """Graph pages only: no SAE served, no replacement."""
    with serve([], graphs=graphs) as (base, _):
        yield base, graphs


@pytest.fixture()
def with_model(graphs):
    """Graph pages with a stand-in model (a fake tokenizer; the circuits calls are replaced in each test)."""
    model = torch.nn.Linear(1, 1)
    model.get_input_embeddings = lambda: torch.nn.Embedding(4000, 1)  # the fixture's token ids are below 4000
    lm = types.SimpleNamespace(model=model, tokenizer=FakeTok())
    with serve([], graphs=graphs, replacement="REPL", lm=lm) as (base, _):
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
    base, root = with_model
    monkeypatch.setitem(sys.modules, "saelab.circuits.interventions", None)  # the module is missing
    code, body = _post(f"{base}/api/graph/g1/intervene", {"edits": [{"node_id": "1_2_3", "op": "ablate"}]})
    assert code == 501 and "not available" in body["detail"]
    calls = []
    before = torch.tensor([[0.0] * 8, [0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0]])  # [n_pos=2, vocab=8]: last row used
    after = torch.tensor([0.0, 1.5, 1.0, 0.0, 0.0, 0.0, 4.0, 0.0])

    def intervene(model, replacement, tokens, edits, mode):
        calls.append((replacement, tokens.tolist(), edits, mode))
        changed = [{"layer": 3, "position": 3, "feature": 11, "before": 2.0, "after": 0.5},
                   {"layer": 2, "position": 3, "feature": 4, "before": 0.0, "after": 1.0}]  # fmt: skip
        return types.SimpleNamespace(logits_before=before, logits_after=after, top_changed=lambda n: changed[:n])

    monkeypatch.setitem(sys.modules, "saelab.circuits.interventions", types.SimpleNamespace(intervene=intervene))
    edits = [{"node_id": "1_2_3", "op": "scale", "value": 2.5}, {"node_id": "0_7_2", "op": "clamp", "value": -1}]
    code, body = _post(f"{base}/api/graph/g1/intervene", {"edits": edits})
    assert code == 200, body
    assert calls == [("REPL", TOKENS, [(1, 3, 2, "scale", 2.5), (0, 2, 7, "clamp", -1.0)], "replacement")]
    pb, pa = before[-1].softmax(-1), after.softmax(-1)
    assert [r["id"] for r in body["before"][:3]] == [1, 6, 2] and [r["id"] for r in body["after"][:2]] == [6, 1]
    assert body["before"][0]["prob"] == pytest.approx(float(pb[1])) and body["after"][0]["token"] == "t6"
    assert body["before"][0]["prob_after"] == pytest.approx(float(pa[1]))
    assert [(f["node_id"], f["in_graph"], f["after"]) for f in body["features"]] == [
        ("3_11_3", True, 0.5),
        ("2_4_3", False, 1.0),
    ]
    for bad, code_want in (
        ({"edits": [{"node_id": "0_2_3", "op": "ablate"}]}, 400),  # an error node, not a feature
        ({"edits": [{"node_id": "E_1_0", "op": "ablate"}]}, 400),
        ({"edits": [{"node_id": "1_2_3", "op": "explode"}]}, 422),
        ({"edits": []}, 422),
    ):
        assert _post(f"{base}/api/graph/g1/intervene", bad)[0] == code_want, bad
    g = graph_json("g9")
    g["nodes"][0]["node_id"] = "E_99999_0"  # a token id this model's 4000-token vocabulary lacks
    g["links"][-1]["source"] = "E_99999_0"
    (root / "g9.json").write_text(json.dumps(g))
    code, body = _post(f"{base}/api/graph/g9/intervene", {"edits": [{"node_id": "1_2_3", "op": "ablate"}]})
    assert code == 400 and "has token id 99999; the served model has 4000 tokens" in body["detail"]


def test_compute_job_progress_cancel_and_bound(with_model, monkeypatch):
    from saelab.view import graph_routes

    base, root = with_model
    gate = threading.Event()

    def compute(replacement, prompt, out, slug, progress, lm=None):
        assert replacement == "REPL" and out == root / slug
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


def test_serve_options_are_checked_before_anything_loads(tmp_path):
    from saelab.errors import UserError
    from saelab.view.app_server import ServeConfig

    with pytest.raises(UserError, match="--graphs .*nope: not a folder"):
        ServeConfig(sae=["S"], graphs=str(tmp_path / "nope")).validate()
    with pytest.raises(UserError, match="--replacement is for the graph pages"):
        ServeConfig(sae=["S"], replacement=str(tmp_path)).validate()
    ServeConfig(sae=["S"], graphs=str(tmp_path)).validate()


def test_graph_features_map_to_the_served_transcoder_of_their_layer(monkeypatch):
    """A CLT over layers 2-5 with 10 latents per layer: layer 4's feature 7 is its latent 2 x 10 + 7; a
    per-layer transcoder of layer 1 holds layer 1's; a residual-stream SAE is never used."""
    from saelab.view.graph_routes import GraphState, feature_of

    def store(name, clt, hookpoint=None, transcoder=True, layers=()):
        cfg = types.SimpleNamespace(hookpoint=hookpoint, is_transcoder=transcoder)
        return types.SimpleNamespace(name=name, clt=clt, model_layers=list(layers), model=None,
                                     sae=types.SimpleNamespace(cfg=cfg, n_per_layer=10))  # fmt: skip

    resid = store("resid", False, "model.layers.1", transcoder=False)
    plt1 = store("plt1", False, "model.layers.1.post_attention_layernorm:output")
    clt = store("clt", True, layers=range(2, 6))
    app = types.SimpleNamespace(stores={s.name: s for s in (resid, plt1, clt)}, locks={})
    import saelab.view.graph_routes as gr

    monkeypatch.setattr(gr, "layer_index", lambda model, h: int(h.split(".")[2]))  # the stand-ins have no model
    g = GraphState(app, Path("."))
    assert g.store_of(4) == (clt, 20) and g.store_of(2) == (clt, 0)
    assert g.store_of(1) == (plt1, 0) and g.store_of(0) == (None, 0) and g.store_of(6) == (None, 0)
    node = {"node_id": "4_7_3", "feature_type": "cross layer transcoder", "ctx_idx": 3}
    assert feature_of(node) == (4, 3, 7)
    assert feature_of(node | {"feature_layer": 5, "feature_id": 9}) == (5, 3, 9)
    assert feature_of({"node_id": "0_4_3", "feature_type": "mlp reconstruction error", "ctx_idx": 3}) is None
    assert feature_of({"node_id": "E_12_3", "feature_type": "embedding", "ctx_idx": 3}) is None


def test_compute_job_runs_the_circuits_stage(tiny_model_dir, tmp_path):
    """A graph job end to end on a tiny random PLT set: `saelab attribute`'s stage function writes
    DIR/<slug>/, the job reports its rows, and the new graph is listed and served."""
    from circuit_helpers import tiny_plt

    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "plt", n=256, k=4))
    root = tmp_path / "graphs"
    root.mkdir()
    lm = load_model(str(tiny_model_dir))
    with serve([], graphs=root, replacement=rep, lm=lm) as (base, _):
        code, body = _post(f"{base}/api/graphs/compute", {"prompt": "The cat sat on the", "slug": "cat"})
        assert code == 202
        for _ in range(600):
            j = json.loads(_get(f"{base}/api/jobs/{body['job']}")[1])
            if j["status"] in ("done", "error"):
                break
            time.sleep(0.1)
        assert j["status"] == "done", j
        assert j["result"]["url"] == "/graph/cat" and j["message"].startswith("attribution rows ")
        done, total = map(int, j["message"].split()[-1].split("/"))
        assert done == total > 0
        assert {"cat.json", "graph.json", "graph.safetensors"} <= {p.name for p in (root / "cat").iterdir()}
        rows = json.loads(_get(f"{base}/api/graphs")[1])["graphs"]
        assert [r["slug"] for r in rows] == ["cat"] and rows[0]["n_nodes"] > 0
        g = json.loads(_get(f"{base}/api/graph/cat")[1])
        assert g["metadata"]["prompt_tokens"][1:] == ["The", " cat", " sat", " on", " the"]
        code, body = _post(f"{base}/api/graphs/compute", {"prompt": "again", "slug": "cat"})
        assert code == 400 and "taken" in body["detail"]


def test_intervene_runs_circuits_interventions_on_a_computed_graph(tiny_model_dir, tmp_path):
    """The page's intervention on a graph the circuits stage wrote equals circuits.interventions.intervene
    called directly with the node's (layer, position, id): the same top tokens and probabilities."""
    from circuit_helpers import tiny_plt

    from saelab.circuits.attribution import attribute
    from saelab.circuits.interventions import intervene
    from saelab.circuits.neuronpedia import write_graph_json
    from saelab.circuits.prune import prune_graph
    from saelab.features.steer import encode_prompt
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "plt", n=256, k=4))
    lm = load_model(str(tiny_model_dir))
    ids = encode_prompt(lm.tokenizer, "The cat sat on the")[0]
    graph = attribute(lm.model, rep, ids, progress=False, tokenizer=lm.tokenizer)
    root = tmp_path / "graphs"
    path = write_graph_json(graph, prune_graph(graph), root / "cat", "cat", "tiny-plt")
    nodes = json.loads(path.read_text())["nodes"]
    feats = [n for n in nodes if n["feature_type"] == "cross layer transcoder"]
    top = max(feats, key=lambda n: n["activation"])
    layer, fid, pos = map(int, top["node_id"].split("_"))
    with serve([], graphs=root, replacement=rep, lm=lm) as (base, _):
        code, body = _post(f"{base}/api/graph/cat/intervene", {"edits": [{"node_id": top["node_id"], "op": "ablate"}]})
        assert code == 200, body
        code, bad = _post(f"{base}/api/graph/cat/intervene", {"edits": [{"node_id": "0_99999_1", "op": "ablate"}]})
        assert code == 400 and "not a feature node" in bad["detail"]
    r = intervene(lm.model, rep, ids, edits=[(layer, pos, fid, "ablate", 0.0)], mode="replacement")
    pb, pa = r.logits_before.float().softmax(-1), r.logits_after.float().softmax(-1)
    assert body["edits"] == [[layer, pos, fid, "ablate", 0.0]]
    assert [x["id"] for x in body["before"]] == pb.topk(10).indices.tolist()
    assert [x["id"] for x in body["after"]] == pa.topk(10).indices.tolist()
    assert [x["prob"] for x in body["after"]] == pytest.approx(pa.topk(10).values.tolist(), rel=1e-5)
    assert body["after"] != body["before"]  # the strongest feature's ablation moves the next-token distribution
