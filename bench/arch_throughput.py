"""Issue 13 throughput: every dictionary type's training speed as a ratio to the bare truncated
forward, all in one process on the embedded model (SmolLM2-135M), 4,608 latents.

Targets: every single-site type (topk, batchtopk, matryoshka, jumprelu, relu, gated, codebook, a skip
transcoder on the layer-6 MLP) >= 0.7x the bare forward stopped after its deepest site; a 3-layer
crosscoder (layers 4, 6, 8) >= 0.5x the forward stopped after layer 8.

Drift on a shared machine moves the forward by up to 20% inside one run (docs/BENCHMARKS.md), so
the bare forward is measured between every two training runs and each run's ratio uses the mean of
the measurements just before and just after it, at its own depth. Training tok/s is the manifest's
(LM tokens / loop seconds: the LM forward, sinks, shuffle buffer and SAE steps; not the model load).

    python bench/arch_throughput.py            # ~6-8 min on a quiet 2-core CPU
    python bench/arch_throughput.py --only jumprelu --steady-from RUN/model.layers.6-jumprelu-c0.001
                                               # also: continue a trained SAE, its L0 settled
    python bench/arch_throughput.py --quick    # smoke run (tiny budgets; the ratios mean nothing)

Writes bench/arch_throughput.result.json (--result) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from saelab.data import load_token_rows
from saelab.models import load_model
from saelab.sae.folder import open_sae
from saelab.storage import read_json, write_json
from saelab.train.config import TrainConfig
from saelab.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import bare_forward_tps  # noqa: E402  (the same bare forward as the other benchmarks)

L6, MLP_IN, MLP_OUT = "model.layers.6", "model.layers.6.post_attention_layernorm", "model.layers.6.mlp"
# penalty architectures: one setting each (their speed depends on L0, recorded next to it), near L0 32
# at 1M tokens on layer 6 (docs/research/dictionaries.md): jumprelu's L0 is set by its coefficient with its
# thresholds at 10x the rate (L0 32.5), gated's by its coefficient with the default sparse start
# (0.009: L0 28.5). relu has no 1M-token calibration; 0.012 is a guess whose L0 the result records.
COEFFS = {"jumprelu": 0.001, "relu": 0.012, "gated": 0.009}
EXTRA = {"jumprelu": {"jumprelu_init_fire": 0.01, "jumprelu_threshold_lr": 10.0}}  # L0 32.5 at 1M tokens
# (name, training options, the hookpoint the bare forward stops after, target ratio)
CASES = [
    (
        arch,
        {"arch": arch, "hookpoints": [L6]}
        | EXTRA.get(arch, {})
        | ({"sparsity_coeff": [COEFFS[arch]]} if arch in COEFFS else {}),
        L6,
        0.7,
    )
    for arch in ("topk", "batchtopk", "matryoshka", "jumprelu", "relu", "gated", "codebook")
]
CASES += [
    ("skip transcoder (L6 MLP)", {"arch": "topk", "hookpoints": [f"{MLP_IN}->{MLP_OUT}"], "skip": True}, MLP_OUT, 0.7),
    ("crosscoder (L4, L6, L8)", {"arch": "crosscoder", "hookpoints": ["model.layers.{4,6,8}"]}, "model.layers.8", 0.5),
]


def run_case(out: Path, opts: dict, a) -> dict:
    """Train one dictionary (k = 32 where the type takes a k) and return its manifest."""
    cfg = TrainConfig(
        out=str(out),
        latents=a.latents,
        k=[a.k],
        tokens=a.tokens,
        batch_tokens=a.batch_tokens,
        context=256,
        threads=a.threads,
        overwrite=True,
        dead_tokens=a.dead_tokens,
        **opts,
    )
    train(cfg)
    return read_json(out / "manifest.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4,096 training and 1,024 forward tokens per "
        "measurement (unless given); the ratios are not meaningful",
    )
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per dictionary (default 65,536)")
    ap.add_argument(
        "--forward-tokens", type=int, default=None, help="tokens per bare-forward measurement (default 16,384)"
    )
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--latents", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--dead-tokens",
        type=int,
        default=None,
        help="train's --dead-tokens (default: the run's, a tenth of --tokens: AuxK starts on latents "
        "unfired for 6.5k tokens, which a 1M run would not call dead yet)",
    )
    ap.add_argument("--only", nargs="+", default=None, help="case names to run (default: all)")
    ap.add_argument(
        "--steady-from",
        nargs="+",
        default=[],
        metavar="SAE_DIR",
        help="trained SAE folders: also time continuing each (--init-from), its L0 already settled; "
        "a penalty type trained from scratch spends these 65k tokens at an L0 in the hundreds",
    )
    ap.add_argument(
        "--result",
        default=None,
        help="JSON result (default bench/arch_throughput.result.json; --quick: a temporary folder's)",
    )
    a = ap.parse_args()
    a.tokens = a.tokens or (4096 if a.quick else 65_536)
    a.forward_tokens = a.forward_tokens or (1024 if a.quick else 16_384)
    cases = [c for c in CASES if not a.only or c[0] in a.only]
    for d in a.steady_from:  # (after --only: these are asked for by name already)
        c = open_sae(Path(d)).sae.cfg
        cases.append(
            (f"{c.arch} continued ({Path(d).parent.name})", {"init_from": d}, c.out_hookpoint or c.hookpoint, 0.7)
        )
    if not cases:
        sys.exit(f"--only: no such case; the cases are: {', '.join(c[0] for c in CASES)}")
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="arch_throughput_"))
    result = (
        Path(a.result)
        if a.result
        else (work / "result.json" if a.quick else Path(__file__).with_name("arch_throughput.result.json"))
    )
    lm = load_model("embedded")
    rows = load_token_rows("builtin", lm.tokenizer, 256)
    res = {
        "command": " ".join(sys.argv),
        "quick": a.quick,
        "machine": {
            "platform": platform.platform(),
            "threads": a.threads,
            "cpu_count": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
        },
        "settings": {
            "tokens": a.tokens,
            "forward_tokens": a.forward_tokens,
            "batch_tokens": a.batch_tokens,
            "latents": a.latents,
            "k": a.k,
            "context": 256,
            "dead_tokens": a.dead_tokens,
            "coefficients": COEFFS,
            "extra_options": EXTRA,
        },
        "runs": [],
    }
    t0 = time.time()
    fwd_hook, fwd_last = None, None  # the latest bare-forward measurement serves the runs on both sides of it
    try:
        for name, opts, hook, target in cases:
            before = fwd_last if hook == fwd_hook else bare_forward_tps(lm.model, rows, a.forward_tokens, 16, hook)
            man = run_case(work / "run", opts, a)
            after = bare_forward_tps(lm.model, rows, a.forward_tokens, 16, hook)
            fwd_hook, fwd_last = hook, after
            (sae,) = man["saes"].values()
            fwd = (before + after) / 2
            res["runs"].append(
                {
                    "name": name,
                    "options": opts,
                    "forward_to": hook,
                    "target": target,
                    "train_tokens_per_s": man["tokens_per_s"],
                    "lm_tokens": man["lm_tokens"],
                    "forward_tokens_per_s": {"before": before, "after": after, "mean": fwd},
                    "ratio": man["tokens_per_s"] / fwd,
                    "passes": man["tokens_per_s"] / fwd >= target,
                    "l0": sae["final"].get("l0"),
                    "fvu": sae["final"].get("fvu"),
                    "dead": sae["final"].get("dead"),
                }
            )
            write_json(result, res)  # what is measured survives an interrupted run
            print(
                f"{name}: {man['tokens_per_s']:,.0f} tok/s, forward {fwd:,.0f} -> {man['tokens_per_s'] / fwd:.2f}x",
                flush=True,
            )
    finally:  # the trained dictionaries are not kept (only their numbers)
        shutil.rmtree(work / "run" if result.parent == work else work, ignore_errors=True)
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["wall_s"] = time.time() - t0
    write_json(result, res)
    print(json.dumps(res["machine"]), f"\nresult: {result}\n")
    print(table(res))


def table(res: dict) -> str:
    lines = [
        "| dictionary | train tok/s | bare forward tok/s (before / after) | ratio | target | L0 | FVU | dead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        f = r["forward_tokens_per_s"]
        dead = f"{r['dead']:.1%}" if r.get("dead") is not None else ""  # (results before the column have none)
        lines.append(
            f"| {r['name']} | {r['train_tokens_per_s']:,.0f} | {f['mean']:,.0f} ({f['before']:,.0f} / "
            f"{f['after']:,.0f}, to {r['forward_to']}) | **{r['ratio']:.2f}** | >= {r['target']} "
            f"{'(met)' if r['passes'] else '(missed)'} | {r['l0']:.1f} | {r['fvu']:.3f} | {dead} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
