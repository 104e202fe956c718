"""Benchmark of issue 2: training throughput next to the bare truncated forward, the cost of
several SAEs per forward, quality at 1M tokens, and peak memory. All in one process so the
ratios compare like with like on a shared machine.

    python bench/train_throughput.py --out runs/bench                     # everything (~25 min on 2 quiet cores)
    python bench/train_throughput.py --part throughput --out runs/bench   # ratios only; needs a quiet machine
    python bench/train_throughput.py --part quality --out runs/bench      # the 1M-token run + evaluation

Writes runs/bench/bench.json and prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from saelab.data import load_token_rows
from saelab.evaluate.run import EvalConfig, evaluate
from saelab.models import collect_activations, load_model
from saelab.storage import read_json, write_json
from saelab.train.config import TrainConfig
from saelab.train.loop import train as train_saes


def bare_forward_tps(model, rows, n_tokens: int, batch_rows: int, hook: str) -> float:
    """Tokens/s of the model forward stopped after `hook`, over training rows, no SAE."""
    sel = rows.train_rows[: max(1, n_tokens // rows.tokens.shape[1])]
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(sel), batch_rows):
            ids = torch.from_numpy(np.asarray(rows.tokens[sel[i : i + batch_rows]], dtype=np.int64))
            collect_activations(model, ids, [hook])
    return len(sel) * rows.tokens.shape[1] / (time.perf_counter() - t)


def train(out: Path, tokens: int, ks: list[int], lrs: list[float] | None) -> dict:
    cfg = TrainConfig(
        out=str(out),
        hookpoints=["model.layers.6"],
        arch="topk",
        latents=4608,
        k=ks,
        lr=lrs,
        tokens=tokens,
        batch_tokens=4096,
        context=256,
        threads=2,
        overwrite=True,
    )
    train_saes(cfg)
    return read_json(out / "manifest.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument(
        "--part",
        choices=["all", "throughput", "quality"],
        default="all",
        help="throughput: bare forward vs 1 and 4 SAEs (needs a quiet machine); quality: the 1M-token run + eval",
    )
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--forward-tokens", type=int, default=32768, help="tokens of each bare-forward measurement")
    ap.add_argument("--multi-tokens", type=int, default=131_072, help="budget of the 1-vs-4 SAE cost comparison")
    ap.add_argument("--eval-tokens", type=int, default=100_000)
    ap.add_argument("--ce-tokens", type=int, default=16_384)
    ap.add_argument("--lr", type=float, nargs="+", default=None)
    ap.add_argument("--multi-k", type=int, nargs="+", default=[16, 32, 64, 128], help="the k of the four SAEs")
    ap.add_argument(
        "--multi-lr",
        type=float,
        nargs="+",
        default=None,
        help="instead of --multi-k: four k=32 SAEs that differ only in learning rate",
    )
    a = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out)
    lm = load_model("embedded")
    rows = load_token_rows("builtin", lm.tokenizer, 256)
    res: dict = {
        "machine": {"platform": platform.platform(), "threads": 2, "cpu_count": os.cpu_count()},
        "command": " ".join(sys.argv),
    }
    if a.part in ("all", "throughput"):
        fwd_before = bare_forward_tps(lm.model, rows, a.forward_tokens, 16, "model.layers.6")
        one = train(out / "one", a.multi_tokens, [32], None)
        four = (
            train(out / "four", a.multi_tokens, [32], a.multi_lr)
            if a.multi_lr
            else train(out / "four", a.multi_tokens, a.multi_k, None)
        )
        fwd_after = bare_forward_tps(lm.model, rows, a.forward_tokens, 16, "model.layers.6")
        fwd = (fwd_before + fwd_after) / 2
        res.update(
            {
                "bare_forward_tokens_per_s": {"before": fwd_before, "after": fwd_after, "mean": fwd},
                "one_sae_tokens_per_s": one["tokens_per_s"],
                "one_sae_over_forward": one["tokens_per_s"] / fwd,
                "four_saes_tokens_per_s": four["tokens_per_s"],
                "four_over_one_cost": one["tokens_per_s"] / four["tokens_per_s"],
            }
        )
    if a.part in ("all", "quality"):
        main_run = train(out / "main", a.tokens, [32], a.lr)
        res.update(
            {
                "train_tokens_per_s": main_run["tokens_per_s"],
                "train_wall_s": main_run["wall_s"],
                "train_peak_rss_mb": main_run["peak_rss_mb"],
            }
        )
        folder = out / "main" / "model.layers.6-topk-k32"
        (metrics,) = evaluate(
            EvalConfig(sae_dirs=[str(folder)], tokens=a.eval_tokens, ce_tokens=a.ce_tokens, overwrite=True)
        )
        m = metrics.to_dict()
        m.pop("l0_histogram", None), m.pop("l0_histogram_edges", None)
        res["quality"] = m
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(out / f"bench_{a.part}.json", res)
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
