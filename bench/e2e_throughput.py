"""Training throughput and peak memory of local vs e2e vs e2e+ds, measured in one invocation.

Each loss type trains the same SAEs (same model, hookpoint, data, k values, token budget) in its
own subprocess, so each peak RSS belongs to one loss type. Prints and writes
bench/e2e_throughput.result.json with tokens/s (LM positions per second of the training loop,
every SAE of the run seeing every position) and the ratios to local.

    python bench/e2e_throughput.py --hookpoint model.layers.15 --tokens 2048 --k 16 32 64

Timings on a shared machine move with the load: compare ratios from one invocation only.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--corpus", default="builtin")
    ap.add_argument("--hookpoint", default="model.layers.15")
    ap.add_argument("--latents", type=int, default=2304)
    ap.add_argument("--k", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--batch-tokens", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recompute", action="store_true", help="e2e activation checkpointing")
    ap.add_argument("--out", default=str(Path(__file__).with_name("e2e_throughput.result.json")))
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loss in ("local", "e2e", "e2e+ds"):
            out = Path(tmp) / loss.replace("+", "_")
            cmd = [
                sys.executable,
                "-m",
                "saelab.cli",
                "train",
                "--out",
                str(out),
                "--model",
                a.model,
                "--corpus",
                a.corpus,
                "--hookpoints",
                a.hookpoint,
                "--dict-size",
                str(a.latents),
                "--k",
                *map(str, a.k),
                "--tokens",
                str(a.tokens),
                "--batch-tokens",
                str(a.batch_tokens),
                "--context",
                str(a.context),
                "--threads",
                str(a.threads),
                "--loss",
                loss,
                "--checkpoint-every",
                str(10**12),
            ]
            if a.recompute and loss != "local":
                cmd.append("--e2e-recompute")
            t = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"{loss} failed:\n{p.stderr[-3000:]}")
            man = json.loads((out / "manifest.json").read_text())
            results[loss] = {
                "tokens_per_s": man["tokens_per_s"],
                "peak_rss_mb": man["peak_rss_mb"],
                "lm_tokens": man["lm_tokens"],
                "wall_s": time.time() - t,
            }
            print(f"{loss:7s} {man['tokens_per_s']:8.1f} tokens/s  peak RSS {man['peak_rss_mb']:.0f} MB", flush=True)
    for loss in ("e2e", "e2e+ds"):
        results[loss]["ratio_to_local"] = results[loss]["tokens_per_s"] / results["local"]["tokens_per_s"]
    record = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.platform()}, 2-core CPU shared with other jobs",
        "settings": vars(a),
        "results": results,
    }
    Path(a.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: round(v.get("ratio_to_local", 1.0), 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
