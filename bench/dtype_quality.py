"""What bfloat16 (or float16) for the LM changes: one TopK SAE trained with the model in float32 and
one in the other precision (same seed, same tokens), each evaluated with the model in both.

    python bench/dtype_quality.py --tokens 16384 --eval-tokens 4096 --ce-tokens 2048 --out /tmp/dtq

Prints one JSON line (and writes it to OUT/result.json); docs/BENCHMARKS.md quotes it. Training
tok/s is the trainer's own loop rate (manifest tokens_per_s, model loading excluded).
"""

import argparse
import json
import shutil
from pathlib import Path

from saelab.evaluate.run import EvalConfig, evaluate
from saelab.storage import read_json, write_json
from saelab.train.config import TrainConfig
from saelab.train.loop import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--ce-tokens", type=int, default=2048)
    p.add_argument("--model", default="embedded")
    p.add_argument("--hookpoint", default="model.layers.6")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--dtype", default="bfloat16", help="the precision compared with float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="/tmp/saelab-dtype-bench")
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    res = {
        "model": a.model,
        "hookpoint": a.hookpoint,
        "latents": a.latents,
        "k": 32,
        "tokens": a.tokens,
        "eval_tokens": a.eval_tokens,
        "ce_tokens": a.ce_tokens,
        "device": a.device,
        "runs": {},
    }
    for train_dtype in ("float32", a.dtype):
        run = out / train_dtype
        (folder,) = train(
            TrainConfig(
                out=str(run),
                hookpoints=[a.hookpoint],
                model=a.model,
                latents=a.latents,
                k=[32],
                tokens=a.tokens,
                batch_tokens=2048,
                context=256,
                threads=a.threads,
                checkpoint_every=10**12,
                dtype=train_dtype,
                device=a.device,
            )
        )
        r = {"train_tokens_per_s": read_json(run / "manifest.json")["tokens_per_s"]}
        for eval_dtype in ("float32", a.dtype):
            cfg = EvalConfig(
                sae_dirs=[str(folder)],
                tokens=a.eval_tokens,
                ce_tokens=a.ce_tokens,
                dtype=eval_dtype,
                out=str(run / f"metrics_{eval_dtype}.json"),
                device=a.device,
            )
            (m,) = evaluate(cfg, quiet=True)
            r[f"eval_{eval_dtype}"] = {key: m[key] for key in ("fvu", "kl", "ce_increase", "l0")}
        res["runs"][f"train_{train_dtype}"] = r
    write_json(out / "result.json", res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
