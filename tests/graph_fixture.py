"""The hand-made attribution graph the graph-page tests serve, in circuit-tracer's format
(circuit_tracer/utils/create_graph_files.py, frontend/graph_models.py): features `{layer}_{feature}_{pos}`,
errors `0_{layer}_{pos}`, tokens `E_{id}_{pos}`, logits `{n_layers + 1}_{id}_{pos}`; and a loopback server."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

from saelab.view.web_app import create_app

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
def serve(stores, **graph_opts):
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
