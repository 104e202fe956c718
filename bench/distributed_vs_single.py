"""2-process torchrun (gloo) training next to 1 process: tokens/s and the equality of the weights.

    python bench/distributed_vs_single.py --tokens 16384 --out /tmp/dist-bench [--modes latents]

Runs `saelab train` twice per mode on the same tokens: 1 process x 2 threads and 2 processes x 1
thread, in data-parallel mode (1 SAE), module-parallel mode (2 SAEs at two hookpoints) and
latent-sharded mode (1 SAE, each process holding half of its latents; `--latents` must be even).
Prints one JSON line; docs/research/scale.md quotes it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from saelab.sae.folder import load_sae
from saelab.storage import read_json


def run(args, nproc, threads, out):
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "saelab.cli"]
        if nproc > 1
        else [sys.executable, "-m", "saelab.cli"]
    )
    r = subprocess.run(
        launch + ["train"] + args + ["--threads", str(threads), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    return read_json(out / "manifest.json")


def maxdiff(a, b):
    wa, wb = load_sae(a)[0].folded_state(), load_sae(b)[0].folded_state()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--model", default="embedded")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--out", default="/tmp/saelab-dist-bench")
    p.add_argument("--modes", nargs="+", default=["data", "modules", "latents"], choices=["data", "modules", "latents"])
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    base = [
        "--model",
        a.model,
        "--dict-size",
        str(a.latents),
        "--k",
        "32",
        "--tokens",
        str(a.tokens),
        "--batch-tokens",
        "4096",
        "--context",
        "256",
        "--buffer-batches",
        "4",
        "--checkpoint-every",
        str(10**12),
    ]
    res = {"tokens": a.tokens, "latents": a.latents, "model": a.model}
    hookpoints = {
        "data": ["model.layers.6"],
        "modules": ["model.layers.3", "model.layers.6"],
        "latents": ["model.layers.6"],
    }
    for mode in a.modes:
        hooks = hookpoints[mode]
        args = base + ["--hookpoints", *hooks, "--distributed", mode]
        one = run(args, 1, 2, out / f"{mode}-1")
        two = run(args, 2, 1, out / f"{mode}-2")
        names = list(one["saes"])
        key = "sharded_latents" if mode == "latents" else mode  # "latents" is the dictionary size above
        res[key] = {
            "saes": len(names),
            "tokens_per_s_1proc_2threads": round(one["tokens_per_s"]),
            "tokens_per_s_2proc_1thread": round(two["tokens_per_s"]),
            "max_abs_weight_diff": max(maxdiff(out / f"{mode}-1" / n, out / f"{mode}-2" / n) for n in names),
            "final_fvu_1proc": [one["saes"][n]["final"]["fvu"] for n in names],
            "final_fvu_2proc": [two["saes"][n]["final"]["fvu"] for n in names],
        }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
