"""Training tok/s next to the bare truncated forward at the same settings, at float32 and bfloat16,
for SmolLM2 (embedded) layer 6: the numbers of issue 14's GPU target. `bench/gpu_bench.sh` runs it
under a deadline; `--device cpu` with a small --tokens is the smoke test this CPU can run.

    python bench/gpu_bench.py --device cuda --tokens 2097152 --out /tmp/saelab_gpu_bench

Per dtype: (1) the bare forward, stopped after model.layers.6, over training rows in LM batches of
--lm-batch-tokens (after a warm-up batch, CUDA synchronised); (2) `saelab train` (TopK, 4,608
latents, k=32, SAE batch --batch-tokens, LM batch --lm-batch-tokens) for --tokens, its
manifest's tokens/s (the training loop's wall time, model load excluded). Prints a table and
one JSON line; writes OUT/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

from saelab.data import load_token_rows
from saelab.models import collect_activations, load_model
from saelab.storage import read_json, write_json
from saelab.train.config import TrainConfig
from saelab.train.loop import train

HOOK, CONTEXT = "model.layers.6", 256


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_forward(device: str, dtype: str, tokens: int, lm_batch_tokens: int) -> float:
    lm = load_model("embedded", device=device, dtype=dtype)
    rows = load_token_rows("builtin", lm.tokenizer, CONTEXT, vocab_size=lm.model.config.vocab_size)
    per = max(1, lm_batch_tokens // CONTEXT)
    n = max(per, tokens // CONTEXT)
    order = np.resize(rows.train_rows, n + per)  # repeats the corpus if it is shorter, as training does

    def batch(i):
        ids = torch.from_numpy(np.asarray(rows.tokens[np.sort(order[i:i + per])], dtype=np.int64))
        return ids.pin_memory().to(device, non_blocking=True) if device.startswith("cuda") else ids

    with torch.no_grad():
        collect_activations(lm.model, batch(n), [HOOK])  # warm-up (kernels, allocator), not timed
        sync(device)
        t = time.perf_counter()
        for i in range(0, n, per):
            collect_activations(lm.model, batch(i), [HOOK])
        sync(device)
        dt = time.perf_counter() - t
    del lm
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return -(-n // per) * per * CONTEXT / dt


def training(device: str, dtype: str, a, out: Path) -> dict:
    cfg = TrainConfig(out=str(out), hookpoints=[HOOK], latents=a.latents, k=[32], tokens=a.tokens,
                      batch_tokens=a.batch_tokens, lm_batch_tokens=a.lm_batch_tokens, buffer_batches=a.buffer_batches,
                      context=CONTEXT, device=device, dtype=dtype, threads=a.threads, checkpoint_every=10**12,
                      overwrite=True)
    train(cfg)
    m = read_json(out / "manifest.json")
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"tokens_per_s": m["tokens_per_s"], "fvu": m["saes"][next(iter(m["saes"]))]["final"]["fvu"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--tokens", type=int, default=2_097_152, help="training tokens per dtype (and forward tokens)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="SAE batch")
    p.add_argument("--lm-batch-tokens", type=int, default=65536, help="LM batch, for training and the bare forward")
    p.add_argument("--buffer-batches", type=int, default=64, help="SAE batches per shuffled chunk")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="/tmp/saelab_gpu_bench")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device (pass --device cpu for a smoke test)")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    res = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "settings": {k: v for k, v in vars(a).items() if k != "out"}, "dtypes": {}}
    for dtype in a.dtypes:
        fwd = bare_forward(a.device, dtype, a.tokens, a.lm_batch_tokens)
        tr = training(a.device, dtype, a, out / dtype)
        res["dtypes"][dtype] = {"bare_forward_tokens_per_s": round(fwd), "train_tokens_per_s": round(tr["tokens_per_s"]),
                                "ratio": round(tr["tokens_per_s"] / fwd, 3), "final_fvu": round(tr["fvu"], 4)}
        print(f"{dtype:>9}: train {tr['tokens_per_s']:>12,.0f} tok/s | bare forward {fwd:>12,.0f} tok/s | "
              f"ratio {tr['tokens_per_s'] / fwd:.2f}", flush=True)
    write_json(out / "gpu_bench.json", res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
