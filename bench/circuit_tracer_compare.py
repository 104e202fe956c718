"""saelab's attribution graph against circuit-tracer's, on a real replacement: how far apart are they?

    python bench/circuit_tracer_compare.py REPLACEMENT CT_OUT [--batch-size 256] [--out compare.json]

CT_OUT is a folder bench/circuit_tracer_graph.py wrote (without --attribute-only) for the circuit-tracer export
of REPLACEMENT; its token ids, --max-n-logits, --desired-logit-prob and --max-feature-nodes are reused, so
saelab's `attribute` sees the same prompt and options. Prints (and writes with --out) one JSON object: whether
the active features, selected features and logit targets are the same, the largest differences of activation
values, target probabilities and edges (absolute, and relative to the largest edge), both graphs' replacement
and completeness scores, and both attribute times. tests/test_circuit_tracer_graph.py asserts the same on tiny
random models; this is the check on the embedded model and its trained transcoders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def compare(ours, theirs: dict, res: dict) -> dict:
    from saelab.circuits.prune import graph_scores

    same_active = ours.active_features.tolist() == theirs["active_features"].tolist()
    same_sel = ours.selected_features.tolist() == theirs["selected_features"].tolist()
    out = {
        "n_active": [len(ours.active_features), len(theirs["active_features"])],
        "n_selected": [ours.n_sel, len(theirs["selected_features"])],
        "same_active_features": same_active,
        "same_selected_features": same_sel,
        "same_logit_targets": ours.target_tokens.tolist() == theirs["logit_targets"].tolist(),
    }
    if same_active:
        out["activation_max_abs_diff"] = float((ours.activation_values - theirs["activation_values"]).abs().max())
    if out["same_logit_targets"]:
        out["target_prob_max_abs_diff"] = float((ours.target_weights - theirs["logit_probabilities"]).abs().max())
    if same_sel and ours.adjacency.shape == theirs["adjacency"].shape:
        diff = (ours.adjacency - theirs["adjacency"]).abs()
        scale = float(theirs["adjacency"].abs().max())
        out |= {
            "edge_max_abs_diff": float(diff.max()),
            "edge_max_abs": scale,
            "edge_max_rel_diff": float(diff.max()) / scale,
        }
    rep, comp = graph_scores(ours)
    out["replacement_score"] = [rep, res.get("replacement_score")]
    out["completeness_score"] = [comp, res.get("completeness_score")]
    out["saelab_exactness"] = ours.meta.get("exactness")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("replacement")
    p.add_argument("ct_out", help="bench/circuit_tracer_graph.py's --out folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the JSON here too")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from saelab.circuits.attribution import attribute
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    res = json.loads((Path(a.ct_out) / "result.json").read_text())
    theirs = load_file(str(Path(a.ct_out) / "graph.safetensors"))
    o = res["options"]
    rep = open_replacement(Path(a.replacement))
    model = load_model(rep.model_spec).model
    t = time.perf_counter()
    ours = attribute(model, rep, theirs["input_tokens"], max_n_logits=o["max_n_logits"],
                     desired_logit_prob=o["desired_logit_prob"], max_feature_nodes=o["max_feature_nodes"],
                     batch_size=a.batch_size, zero_positions=o["zero_positions"], progress=False)  # fmt: skip
    out = compare(ours, theirs, res) | {
        "n_tokens": len(theirs["input_tokens"]),
        "attribute_s": {"saelab": time.perf_counter() - t, "circuit-tracer": res["time_s"]["attribute"]},
    }
    print(json.dumps(out, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
