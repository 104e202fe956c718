"""Issue 13: a 3-layer crosscoder's training throughput next to the bare truncated forward (to its
deepest site), then its per-site FVU and all-sites-spliced CE, all in one process so the ratio
compares like with like on a shared machine.

    python bench/crosscoder_throughput.py --out .cache/dictionaries/xc --tokens 65536

Writes OUT/bench_crosscoder.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from saelab.data import load_token_rows
from saelab.models import load_model
from saelab.storage import read_json, write_json
from saelab.train.config import TrainConfig
from saelab.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import bare_forward_tps  # noqa: E402  (the same bare forward as the other benchmarks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".cache/dictionaries/xc")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--latents", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--forward-tokens", type=int, default=16_384)
    ap.add_argument("--eval-tokens", type=int, default=16_384)
    ap.add_argument("--ce-tokens", type=int, default=4096)
    a = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out)
    lm = load_model("embedded")
    rows = load_token_rows("builtin", lm.tokenizer, 256)
    deepest = f"model.layers.{max(a.layers)}"
    before = bare_forward_tps(lm.model, rows, a.forward_tokens, 16, deepest)
    cfg = TrainConfig(
        out=str(out / "run"),
        hookpoints=["model.layers.{" + ",".join(map(str, a.layers)) + "}"],
        arch="crosscoder",
        latents=a.latents,
        k=[a.k],
        tokens=a.tokens,
        batch_tokens=4096,
        context=256,
        threads=2,
        overwrite=True,
        lr=[5e-3],
    )
    (folder,) = train(cfg)
    after = bare_forward_tps(lm.model, rows, a.forward_tokens, 16, deepest)
    man = read_json(out / "run" / "manifest.json")
    fwd = (before + after) / 2
    from saelab.evaluate.run import EvalConfig, evaluate

    res = {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "threads": 2,
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "bare_forward_tokens_per_s": {"before": before, "after": after, "mean": fwd, "to": deepest},
        "crosscoder_tokens_per_s": man["tokens_per_s"],
        "crosscoder_over_forward": man["tokens_per_s"] / fwd,
        "train_final": man["saes"][folder.name]["final"],
    }
    write_json(out / "bench_crosscoder.json", res)  # the ratio survives an interrupted evaluation
    print(json.dumps(res, indent=2, default=str), flush=True)
    evaluate(EvalConfig(sae_dirs=[str(folder)], tokens=a.eval_tokens, ce_tokens=a.ce_tokens, overwrite=True))
    res["eval"] = read_json(folder / "metrics.json")["metrics"]
    write_json(out / "bench_crosscoder.json", res)
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
