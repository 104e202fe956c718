"""Hand-built attribution graphs for the tests of circuits/ (no model, no attribution core): a random DAG
adjacency that respects what edges may exist (tokens and errors have no inputs; a feature reads tokens and
the features and errors of earlier layers; a target reads everything but targets), and a circuit-tracer
subprocess runner (its own virtualenv; the tests that need it skip when it is absent)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from saelab.circuits.graph import Graph

CT_PYTHON = Path("/work/main/.cache/venvs/circuit-tracer/bin/python")
TOKENIZER = Path("/work/main/.cache/models/SmolLM2-135M-Instruct")


def random_graph(
    n_layers=3, n_pos=4, n_active=12, n_sel=None, n_targets=3, seed=0, density=0.6, custom_targets=0
) -> Graph:
    g = torch.Generator().manual_seed(seed)
    layers = torch.randint(0, n_layers, (n_active,), generator=g)
    pos = torch.randint(1, n_pos, (n_active,), generator=g)  # position 0: no features (the sink)
    fids = torch.randperm(50, generator=g)[:n_active]
    active = torch.stack([layers, pos, fids], 1)
    values = torch.rand(n_active, generator=g) * 3 + 0.1
    n_sel = n_active if n_sel is None else n_sel
    selected = torch.randperm(n_active, generator=g)[:n_sel]  # node order need not be layer order
    n_err, n_nodes = n_layers * n_pos, n_sel + n_layers * n_pos + n_pos + n_targets
    adj = torch.zeros(n_nodes, n_nodes)
    feat_layer = layers[selected]
    err_layer = torch.arange(n_layers).repeat_interleave(n_pos)
    tok0, tgt0 = n_sel + n_err, n_sel + n_err + n_pos
    for i in range(n_sel):  # a feature row: tokens, earlier features, earlier errors
        allowed = torch.zeros(n_nodes, dtype=torch.bool)
        allowed[:n_sel] = feat_layer < feat_layer[i]
        allowed[n_sel:tok0] = err_layer < feat_layer[i]
        allowed[tok0:tgt0] = True
        keep = allowed & (torch.rand(n_nodes, generator=g) < density)
        adj[i, keep] = torch.randn(int(keep.sum()), generator=g)
    for t in range(n_targets):
        keep = torch.rand(n_nodes, generator=g) < density
        keep[tgt0:] = False
        adj[tgt0 + t, keep] = torch.randn(int(keep.sum()), generator=g)
    probs = torch.rand(n_targets, generator=g)
    probs = probs / probs.sum() * 0.9
    vocab = torch.randperm(1000, generator=g)[: n_targets + n_pos] + 10
    target_tokens = vocab[:n_targets].clone()
    labels = [f"t{int(v)}" for v in target_tokens]
    for i in range(custom_targets):
        target_tokens[i] = -1
        labels[i] = f'"t{i}" - "u{i}"'
    tokens = vocab[n_targets:]
    return Graph(
        prompt="a random prompt",
        tokens=tokens,
        token_strings=[f"tok{int(v)}" for v in tokens],
        n_layers=n_layers,
        active_features=active,
        activation_values=values,
        selected_features=selected,
        adjacency=adj,
        target_tokens=target_tokens,
        target_labels=labels,
        target_weights=probs,
        meta={"scan": "test-scan", "vocab_size": 2000},
    )


def need_circuit_tracer():
    if not CT_PYTHON.exists():
        pytest.skip("circuit-tracer's virtualenv is not installed")


def run_circuit_tracer(script: str, tmp: Path, **inputs) -> dict:
    """Run `script` in circuit-tracer's python with the tensors `inputs` in tmp/in.pt (as `IN`); it must
    write its answer as JSON to tmp/out.json (as `OUT`)."""
    need_circuit_tracer()
    torch.save({k: v for k, v in inputs.items()}, tmp / "in.pt")
    head = f"import torch, json\nIN = torch.load({str(tmp / 'in.pt')!r})\nOUT = {str(tmp / 'out.json')!r}\n"
    r = subprocess.run([str(CT_PYTHON), "-c", head + script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def ct_tokenizer(tmp: Path) -> Path:
    """The embedded model's tokenizer in a folder circuit-tracer's (older) transformers reads."""
    folder = tmp / "tokenizer"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_bytes((TOKENIZER / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def ct_graph_code(n_layers: int, tokenizer: Path = TOKENIZER) -> str:
    """Code (in circuit-tracer's python) that builds its Graph `G` from IN (our graph's tensors)."""
    return f"""
from circuit_tracer.graph import Graph
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig
cfg = UnifiedConfig(n_layers={n_layers}, d_model=8, d_head=2, n_heads=4, d_mlp=16, d_vocab=IN['vocab_size'],
                    tokenizer_name={str(tokenizer)!r}, model_name='t', original_architecture='LlamaForCausalLM')
targets = [LogitTarget(s, int(v)) for s, v in zip(IN['labels'], IN['vocab_ids'].tolist())]
G = Graph(input_string=IN['prompt'], input_tokens=IN['tokens'], active_features=IN['active_features'],
          adjacency_matrix=IN['adjacency'], cfg=cfg, selected_features=IN['selected_features'],
          activation_values=IN['activation_values'], logit_targets=targets,
          logit_probabilities=IN['target_weights'], scan='test-scan', vocab_size=IN['vocab_size'])
"""


def ct_inputs(graph: Graph, vocab_ids) -> dict:
    return {
        "prompt": graph.prompt,
        "tokens": graph.tokens,
        "active_features": graph.active_features,
        "adjacency": graph.adjacency,
        "selected_features": graph.selected_features,
        "activation_values": graph.activation_values,
        "target_weights": graph.target_weights,
        "labels": list(graph.target_labels),
        "vocab_ids": torch.tensor(vocab_ids),
        "vocab_size": int(graph.meta["vocab_size"]),
    }
