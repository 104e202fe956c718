"""Issue 28: training throughput of a whole replacement model next to the bare full forward.

A per-layer transcoder set (PLT: one TopK transcoder per MLP, `--layers all`) and a cross-layer
transcoder (CLT, `--arch clt --layers all`) at the same latents per layer and k per layer (so the
same total L0), each trained in its own process (so its peak RSS is its own), between two
measurements of the bare forward through every layer (no LM head), in one script so the ratios
compare like with like on a shared machine.

    python bench/replacement_throughput.py --out .cache/bench28/tp --tokens 65536        # 2-core CPU
    python bench/replacement_throughput.py --out /tmp/tp --device cuda --dtype bfloat16 \\
        --tokens 4194304 --latents 4096 --lm-batch-tokens 65536                         # one GPU

Writes OUT/replacement_throughput.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from saelab.data import load_token_rows
from saelab.families import family_of
from saelab.models import collect_activations, load_model
from saelab.storage import read_json, write_json


def bare_forward_tps(model, rows, n_tokens: int, batch_rows: int, hook: str, device: str) -> float:
    """Tokens/s of the model's forward stopped after `hook` (the last MLP): what every training step pays."""
    sel = rows.train_rows[: max(1, n_tokens // rows.tokens.shape[1])]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(sel), batch_rows):
            ids = torch.from_numpy(np.asarray(rows.tokens[sel[i : i + batch_rows]], dtype=np.int64)).to(device)
            collect_activations(model, ids, [hook])
    sync()
    return len(sel) * rows.tokens.shape[1] / (time.perf_counter() - t)


def train_run(out: Path, arch: str, a) -> dict:
    """`saelab train --layers all` in a child process; its manifest (tok/s, wall, peak RSS)."""
    cmd = [sys.executable, "-m", "saelab", "train", "--out", str(out), "--overwrite", "--layers", a.layers]
    cmd += ["--arch", arch, "--dict-size", str(a.latents), "--k", str(a.k), "--tokens", str(a.tokens)]
    cmd += ["--threads", str(a.threads), "--device", a.device, "--dtype", a.dtype, "--seed", "0"]
    cmd += ["--batch-tokens", str(a.batch_tokens), "--buffer-batches", str(a.buffer_batches)]
    if a.lm_batch_tokens:
        cmd += ["--lm-batch-tokens", str(a.lm_batch_tokens)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    m = read_json(out / "manifest.json")
    return {
        "command": " ".join(cmd[1:]),
        "tokens_per_s": m["tokens_per_s"],
        "wall_s": m["wall_s"],
        "process_s": time.perf_counter() - t,
        "peak_rss_mb": m.get("peak_rss_mb"),
        "peak_gpu_mb": m.get("peak_gpu_mb"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".cache/bench28/tp")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--latents", type=int, default=1024, help="latents per layer (PLT and CLT alike)")
    ap.add_argument("--k", type=int, default=16, help="active latents per layer per token")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--kinds", nargs="+", default=["plt", "clt"], choices=["plt", "clt"])
    ap.add_argument("--forward-tokens", type=int, default=16_384)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--lm-batch-tokens", type=int, default=None)
    ap.add_argument(
        "--buffer-batches", type=int, default=2, help="batches per shuffled chunk: the chunk holds all 60 sites"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model("embedded", device=a.device, dtype=a.dtype)
    rows = load_token_rows("builtin", lm.tokenizer, 256, vocab_size=lm.model.config.vocab_size)
    fam = family_of(lm.model)
    last = fam.mlp_out_site(lm.model.config.num_hidden_layers - 1)
    batch_rows = max(1, (a.lm_batch_tokens or a.batch_tokens) // 256)
    res: dict = {
        "machine": {"platform": platform.platform(), "threads": a.threads, "cpu_count": os.cpu_count()},
        "device": a.device if not a.device.startswith("cuda") else torch.cuda.get_device_name(),
        "dtype": a.dtype,
        "command": " ".join(sys.argv),
        "latents_per_layer": a.latents,
        "k_per_layer": a.k,
        "tokens": a.tokens,
    }
    before = bare_forward_tps(lm.model, rows, a.forward_tokens, batch_rows, last, a.device)
    del lm
    runs = {kind: train_run(out / kind, "topk" if kind == "plt" else "clt", a) for kind in a.kinds}
    lm = load_model("embedded", device=a.device, dtype=a.dtype)
    after = bare_forward_tps(lm.model, rows, a.forward_tokens, batch_rows, last, a.device)
    fwd = (before + after) / 2
    res["bare_forward_tokens_per_s"] = {"before": before, "after": after, "mean": fwd}
    for r in runs.values():
        r["over_bare_forward"] = r["tokens_per_s"] / fwd
    res["runs"] = runs
    write_json(out / "replacement_throughput.json", res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
