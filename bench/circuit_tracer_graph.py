"""circuit-tracer's attribution graph of one prompt, the reference saelab's `attribute` is checked and timed against.

Run with circuit-tracer's OWN interpreter (circuit-tracer 0.5 + nnsight 0.6, transformers 4.57; not a saelab
dependency, so this file imports nothing from saelab). circuit-tracer was installed there with --no-deps; its
nnsight backend also needs `pip install "nnsight>=0.6,<0.7" "einops>=0.8"` in that venv (done 2026-12-06:
nnsight 0.6.3, einops 0.8.2; torch and transformers untouched):

    HF_HUB_OFFLINE=1 /work/main/.cache/venvs/circuit-tracer/bin/python bench/circuit_tracer_graph.py \\
        CT_FOLDER --model MODEL_FOLDER (--prompt TEXT | --tokens 1,504,3) --out DIR \\
        [--max-n-logits 10] [--desired-logit-prob 0.95] [--batch-size 256] [--max-feature-nodes N]

CT_FOLDER is a transcoder set in circuit-tracer's local layout (`saelab export --format circuit-tracer
REPLACEMENT --out CT_FOLDER`); MODEL_FOLDER a local Hugging Face folder (the embedded model:
$SAELAB_CACHE/models/SmolLM2-135M-Instruct). Everything runs on the CPU in float32 with the nnsight backend
(transformer-lens cannot load a local folder of an architecture it does not list).

Writes into DIR:
  graph.safetensors  input_tokens [n_pos], active_features [n_active, 3] (layer, pos, id), activation_values,
                     selected_features [n_sel], adjacency [n_nodes, n_nodes] (circuit-tracer's node order:
                     features, errors layer-major, tokens, logits), logit_targets [n_logits] (vocab ids),
                     logit_probabilities, logits [n_pos, vocab] (the clean run), node_mask, edge_mask,
                     cumulative_scores (prune_graph), row_inputs [n_sel + n_logits] (what each row's edges sum
                     to: pre-activation minus encoder bias, demeaned logit)
  result.json        options, versions, token strings, logit target strings, replacement / completeness
                     scores, row-sum residuals, timings (wall and circuit-tracer's own phases), peak memory
  <slug>.json        the pruned Neuronpedia graph JSON (create_graph_files) and graph-metadata.json beside it
With --attribute-only only result.json (times, memory, node counts: what bench/attribution_cost.py reads).
Times: load, attribute (wall) and circuit-tracer's own phases (precompute, forward, logit / feature attribution),
prune, scores, graph_files; memory: ru_maxrss of the process and VmHWM over attribute alone (reset before it).

Pitfalls handled here (each would otherwise give a silently different or failed run):
  - the model folder is written by transformers 5 (`rope_parameters`, a GGUF `quantization_config`, tokenizer
    class `TokenizersBackend`); transformers 4.57 would read rope_theta as 10,000 instead of 100,000. A copy
    of the config with the v4 names (weights symlinked) is what circuit-tracer loads.
  - circuit-tracer 0.5 loads `activation: topk` from a local folder as ReLU. `--topk saelab` (default) puts
    saelab's TopK back (k largest pre-activations, then ReLU); `--topk circuit-tracer` its TopK class (no
    ReLU); `--topk relu` leaves what 0.5 loads.
  - a text prompt is tokenized without special tokens and gets a BOS (<|im_start|>, id 1 for SmolLM2)
    prepended unless its first token is special; `--tokens` ids are used as given (same rule).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

PHASES = {
    "Precomputation": "precompute_s",
    "Forward pass": "forward_s",
    "Input vectors built": "input_vectors_s",
    "Logit attributions": "logit_attribution_s",
    "Feature attributions": "feature_attribution_s",
    "Attribution completed": "attribute_total_s",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ct_folder", help="transcoder set in circuit-tracer's local layout (config.yaml + layer_*)")
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text (a BOS is prepended as circuit-tracer does)")
    src.add_argument("--tokens", help="comma-separated token ids")
    p.add_argument("--out", required=True, help="output folder (created; files in it are overwritten)")
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=None, help="default: every active feature")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--topk", choices=("saelab", "circuit-tracer", "relu"), default="saelab")
    p.add_argument("--zero-positions", type=int, default=1, help="leading positions without features (1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slug", default="circuit-tracer-graph")
    p.add_argument("--no-files", action="store_true", help="skip create_graph_files (the Neuronpedia JSON)")
    p.add_argument("--attribute-only", action="store_true", help="time attribute alone: result.json, no graph files")
    a = p.parse_args(argv)
    if not (Path(a.ct_folder) / "config.yaml").is_file():
        p.error(f"{a.ct_folder} has no config.yaml: not a circuit-tracer transcoder folder")
    if not (Path(a.model) / "config.json").is_file():
        p.error(f"{a.model} has no config.json: not a local Hugging Face model folder")
    if a.batch_size < 1 or a.max_n_logits < 1 or (a.max_feature_nodes is not None and a.max_feature_nodes < 1):
        p.error("--batch-size, --max-n-logits and --max-feature-nodes must be positive")
    return a


# ---------------------------------------------------------------- loading


def v4_model_folder(src: Path, dst: Path) -> Path:
    """A copy of model folder `src` that transformers 4.57 reads as transformers 5 does: weights and tokenizer
    symlinked, config.json with rope_theta / rope_scaling instead of rope_parameters and no quantization_config
    (the GGUF it names was dequantised into model.safetensors), tokenizer_config.json naming the fast tokenizer."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json"):
            os.symlink(f.resolve(), dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config", None)
    rope = cfg.pop("rope_parameters", None)
    if rope and "rope_theta" not in cfg:
        rope = dict(rope)
        cfg["rope_theta"] = rope.pop("rope_theta", 10000.0)
        cfg["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    if (src / "tokenizer_config.json").exists():
        tok = json.loads((src / "tokenizer_config.json").read_text())
        if tok.get("tokenizer_class") in (None, "TokenizersBackend"):
            tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        for k in ("backend", "is_local", "local_files_only"):
            tok.pop(k, None)
        (dst / "tokenizer_config.json").write_text(json.dumps(tok, indent=1))
    return dst


def set_topk(transcoders, ct_folder: Path, how: str) -> str:
    """circuit-tracer 0.5 ignores `activation: topk` in a local folder (ReLU); put the TopK back."""
    import yaml

    cfg = yaml.safe_load((ct_folder / "config.yaml").read_text())
    if cfg.get("activation") != "topk" or how == "relu":
        return cfg.get("activation") or "relu"
    from circuit_tracer.transcoder.activation_functions import TopK

    k = int(cfg["k"])
    for t in transcoders:
        t.activation_function = TopK(k) if how == "circuit-tracer" else SaelabTopK(k)
    return f"topk-{how}"


class SaelabTopK(torch.nn.Module):
    """saelab's TopK: the k largest pre-activations, negative ones zeroed."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.topk(self.k, dim=-1).indices
        return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx)).relu()


class PhaseLog(logging.Handler):
    """Collects circuit-tracer's own phase timings ("... completed in 1.23s") from its `attribution` logger."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.phases: dict[str, float] = {}
        self.n_active: int | None = None

    def emit(self, record):
        msg = record.getMessage()
        m = re.search(r"([\d.]+)s$", msg)
        for prefix, key in PHASES.items():
            if m and msg.startswith(prefix):
                self.phases[key] = float(m.group(1))
        if msg.startswith("Found ") and msg.endswith("active features"):
            self.n_active = int(msg.split()[1])


def watch_phases() -> PhaseLog:
    """attribute() sets its logger to WARNING unless verbose (and then adds a stderr handler and a tqdm bar):
    attach our handler at INFO and pin the level."""
    log = logging.getLogger("attribution")
    h = PhaseLog()
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.setLevel = lambda *_: None  # type: ignore[method-assign]
    return h


def hwm_mib() -> float:
    """Peak resident memory of this process since the last reset_hwm (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- the run


def row_inputs(model, graph, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits [n_pos, vocab], what each computed row's edges should sum to): a feature row its
    pre-activation minus its encoder bias (the encoder vector . the MLP input), a logit row its demeaned
    logit (the demeaned unembedding column . the final residual)."""
    with torch.no_grad():
        logits, pre = model.get_activations(tokens, apply_activation_function=False)
    logits = logits.squeeze(0).float()
    sel = graph.active_features[graph.selected_features]  # [n_sel, 3]
    d = pre.new_zeros(1, model.cfg.d_model)
    b_enc = [model.transcoders.encode_layer(d, layer, apply_activation_function=False)[0] for layer in range(len(pre))]
    feats = [pre[layer, pos, fid] - b_enc[layer][fid] for layer, pos, fid in sel.tolist()]
    last = logits[-1]
    ids = graph.logit_token_ids
    logit_in = last[ids] - last.mean()
    return logits, torch.cat([torch.stack(feats) if feats else torch.zeros(0), logit_in]).float()


def row_residuals(graph, inputs: torch.Tensor) -> dict:
    """Worst |row sum - input| / max |input| over feature rows and logit rows. Exact (float error) only when
    every active feature is a column, the transcoders have no output bias and no position is zeroed: the
    edges leave out those constants."""
    a = graph.adjacency_matrix
    n_sel, n_log = len(graph.selected_features), len(graph.logit_targets)
    sums = torch.cat([a[:n_sel].sum(1), a[-n_log:].sum(1)])
    out = {}
    for name, sl in (("features", slice(0, n_sel)), ("logits", slice(n_sel, n_sel + n_log))):
        x, s = inputs[sl], sums[sl]
        if len(x):
            out[name] = float((s - x).abs().max() / x.abs().max().clamp(min=1e-12))
    out["all_features_selected"] = n_sel == len(graph.active_features)
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    tmp = Path(tempfile.mkdtemp(prefix="ct-model-"))
    try:
        model_dir = v4_model_folder(Path(a.model), tmp / "model")
        ct_folder = Path(a.ct_folder).resolve()
        tc, _ = load_transcoder_from_hub(
            str(ct_folder), device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False
        )
        activation = set_topk(tc, ct_folder, a.topk) if hasattr(tc, "transcoders") else "clt"
        model = ReplacementModel.from_pretrained_and_transcoders(
            str(model_dir), tc, backend="nnsight", device=torch.device("cpu"), dtype=torch.float32
        )
        model.zero_positions = slice(0, a.zero_positions)
        load_s = time.perf_counter() - t0
        rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        prompt = [int(t) for t in a.tokens.split(",")] if a.tokens else a.prompt
        tokens = model.ensure_tokenized(prompt)

        phases = watch_phases()
        hwm_reset = reset_hwm()
        t1 = time.perf_counter()
        graph = attribute(
            tokens,
            model,
            max_n_logits=a.max_n_logits,
            desired_logit_prob=a.desired_logit_prob,
            batch_size=a.batch_size,
            max_feature_nodes=a.max_feature_nodes,
        )
        attribute_s = time.perf_counter() - t1
        attribute_peak = hwm_mib() if hwm_reset else None

        tok = model.tokenizer
        result = {
            "format": "circuit-tracer-graph",
            "ct_folder": str(ct_folder),
            "model": str(Path(a.model).resolve()),
            "options": {k: v for k, v in vars(a).items() if k not in ("ct_folder", "model", "out")},
            "activation": activation,
            "versions": versions(),
            "input_tokens": graph.input_tokens.tolist(),
            "token_strings": [tok.decode([t]) for t in graph.input_tokens.tolist()],
            "logit_targets": [[lt.token_str, lt.vocab_idx] for lt in graph.logit_targets],
            "logit_probabilities": graph.logit_probabilities.tolist(),
            "n_layers": graph.cfg.n_layers,
            "n_pos": graph.n_pos,
            "n_active": len(graph.active_features),
            "n_selected": len(graph.selected_features),
            "n_nodes": graph.adjacency_matrix.shape[0],
            "time_s": {"load": load_s, "attribute": attribute_s} | phases.phases,
            "memory_mib": {"peak_rss_after_load": rss_load, "attribute_peak_rss": attribute_peak},
        }
        if not a.attribute_only:
            result |= after_attribution(a, model, graph, tokens, out, ct_folder, result["time_s"])
        result["time_s"]["total"] = time.perf_counter() - t0
        result["memory_mib"]["peak_rss"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, hwm_mib())
        (out / "result.json").write_text(json.dumps(result, indent=1))
        keys = ("n_active", "n_selected", "replacement_score", "completeness_score", "time_s", "memory_mib")
        print(json.dumps({k: result[k] for k in keys if k in result}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def after_attribution(a, model, graph, tokens, out: Path, ct_folder: Path, times: dict) -> dict:
    """prune_graph, compute_graph_scores, create_graph_files (timed into `times`), then the row inputs and
    graph.safetensors. -> the result's entries they add."""
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    t = time.perf_counter()
    pr = prune_graph(graph, a.node_threshold, a.edge_threshold)
    times["prune"] = time.perf_counter() - t
    t = time.perf_counter()
    replacement, completeness = compute_graph_scores(graph)
    times["scores"] = time.perf_counter() - t
    if not a.no_files:
        from circuit_tracer.utils.create_graph_files import create_graph_files

        t = time.perf_counter()
        create_graph_files(graph, a.slug, str(out), scan=graph.scan or str(ct_folder),
                           node_threshold=a.node_threshold, edge_threshold=a.edge_threshold)  # fmt: skip
        times["graph_files"] = time.perf_counter() - t
    logits, inputs = row_inputs(model, graph, tokens)
    write_outputs(out, graph, pr, logits, inputs)
    return {
        "pruned_nodes": int(pr.node_mask.sum()),
        "pruned_edges": int(pr.edge_mask.sum()),
        "replacement_score": replacement,
        "completeness_score": completeness,
        "row_sum_residual": row_residuals(graph, inputs),
    }


def write_outputs(out: Path, graph, pr, logits: torch.Tensor, inputs: torch.Tensor) -> None:
    from safetensors.torch import save_file

    t = {
        "input_tokens": graph.input_tokens.cpu().long(),
        "active_features": graph.active_features.cpu().long(),
        "activation_values": graph.activation_values.cpu().float(),
        "selected_features": graph.selected_features.cpu().long(),
        "adjacency": graph.adjacency_matrix.cpu().float(),
        "logit_targets": graph.logit_token_ids.cpu().long(),
        "logit_probabilities": graph.logit_probabilities.cpu().float(),
        "logits": logits.cpu().float(),
        "row_inputs": inputs.cpu().float(),
        "node_mask": pr.node_mask.cpu(),
        "edge_mask": pr.edge_mask.cpu(),
        "cumulative_scores": pr.cumulative_scores.cpu().float(),
    }
    tmp = out / "graph.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in t.items()}, str(tmp))
    os.replace(tmp, out / "graph.safetensors")


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for pkg in ("circuit-tracer", "nnsight", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a version string is informative only
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
