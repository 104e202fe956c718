"""Training tok/s next to the bare truncated forward at the same settings, at float32 and bfloat16,
for SmolLM2 (embedded) layer 6: the numbers of issue 14's GPU target. `bench/gpu_bench.sh` runs it
under a deadline; `--device cpu` with a small --tokens is the smoke test this CPU can run.

    python bench/gpu_bench.py --device cuda --tokens 2097152 --out /tmp/saelab_gpu_bench

Per dtype: (1) the bare forward, stopped after model.layers.6, over training rows in LM batches of
--lm-batch-tokens (after a warm-up batch, CUDA synchronised); (2) `saelab train` (TopK, 4,608
latents, k=32, SAE batch --batch-tokens, LM batch --lm-batch-tokens) for --tokens, its
manifest's tokens/s (the training loop's wall time, model load excluded). With --compile, after
every dtype's plain run, the same training with `--compile` (torch.compile of the dictionary's
forward + loss): its loop time includes the compilation, so both runs also report the steady
tok/s of their second half (train_log.jsonl). Prints a table and one JSON line; writes
OUT/gpu_bench.json after every measurement, so a run cut by the deadline keeps what it measured.
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
        ids = torch.from_numpy(np.asarray(rows.tokens[np.sort(order[i : i + per])], dtype=np.int64))
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


def training(device: str, dtype: str, a, out: Path, compile: bool = False) -> dict:
    cfg = TrainConfig(
        out=str(out),
        hookpoints=[HOOK],
        latents=a.latents,
        k=[32],
        tokens=a.tokens,
        batch_tokens=a.batch_tokens,
        lm_batch_tokens=a.lm_batch_tokens,
        buffer_batches=a.buffer_batches,
        context=CONTEXT,
        device=device,
        dtype=dtype,
        threads=a.threads,
        checkpoint_every=10**12,
        overwrite=True,
        compile=compile,
    )
    train(cfg)
    m = read_json(out / "manifest.json")
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "tokens_per_s": m["tokens_per_s"],
        "steady_tokens_per_s": steady(out),
        "fvu": m["saes"][next(iter(m["saes"]))]["final"]["fvu"],
    }


def steady(out: Path) -> float | None:
    """tok/s over the second half of the run's log (after warm-up and compilation)."""
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    if len(log) < 3:
        return None
    mid, last = log[len(log) // 2], log[-1]
    dt = last["wall_s"] - mid["wall_s"]
    return round((last["tokens"] - mid["tokens"]) / dt) if dt > 0 else None


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
    p.add_argument("--compile", action="store_true", help="also train with --compile, after the plain runs")
    p.add_argument("--out", default="/tmp/saelab_gpu_bench")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device (pass --device cpu for a smoke test)")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    res = {
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "dtypes": {},
    }
    for dtype in a.dtypes:
        fwd = bare_forward(a.device, dtype, a.tokens, a.lm_batch_tokens)
        tr = training(a.device, dtype, a, out / dtype)
        res["dtypes"][dtype] = {
            "bare_forward_tokens_per_s": round(fwd),
            "train_tokens_per_s": round(tr["tokens_per_s"]),
            "train_steady_tokens_per_s": tr["steady_tokens_per_s"],
            "ratio": round(tr["tokens_per_s"] / fwd, 3),
            "final_fvu": round(tr["fvu"], 4),
        }
        print(
            f"{dtype:>9}: train {tr['tokens_per_s']:>12,.0f} tok/s | bare forward {fwd:>12,.0f} tok/s | "
            f"ratio {tr['tokens_per_s'] / fwd:.2f} | steady {tr['steady_tokens_per_s']}",
            flush=True,
        )
        write_json(out / "gpu_bench.json", res)
    for dtype in a.dtypes if a.compile else ():  # last: the plain numbers are written even if this runs out of time
        tr = training(a.device, dtype, a, out / f"{dtype}_compiled", compile=True)
        d = res["dtypes"][dtype]
        d |= {
            "compiled_train_tokens_per_s": round(tr["tokens_per_s"]),
            "compiled_steady_tokens_per_s": tr["steady_tokens_per_s"],
            "compiled_final_fvu": round(tr["fvu"], 4),
        }
        print(
            f"{dtype:>9}: compiled train {tr['tokens_per_s']:>12,.0f} tok/s (compilation included) | steady "
            f"{tr['steady_tokens_per_s']} vs {d['train_steady_tokens_per_s']} plain",
            flush=True,
        )
        write_json(out / "gpu_bench.json", res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
