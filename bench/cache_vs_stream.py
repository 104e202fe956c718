"""Training tokens/s from the activation cache vs streaming from the LM: same SAE, same tokens, one run.

    python bench/cache_vs_stream.py --tokens 32768 --out /tmp/cvs

Prints one JSON line; docs/research/scale.md quotes it. Timing is the trainer's own loop rate (manifest
tokens_per_s), so model loading is excluded for streaming and nothing is excluded for the cache.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from saelab.activations.disk_cache import CacheConfig, write_cache
from saelab.storage import read_json
from saelab.train.config import TrainConfig
from saelab.train.loop import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--model", default="embedded")
    p.add_argument("--hookpoint", default="model.layers.6")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="/tmp/saelab-cache-bench")
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    common = dict(
        hookpoints=[a.hookpoint],
        model=a.model,
        latents=a.latents,
        k=[32],
        tokens=a.tokens,
        batch_tokens=4096,
        context=256,
        threads=a.threads,
        checkpoint_every=10**12,
    )
    train(TrainConfig(out=str(out / "stream"), **common))
    t = time.time()
    write_cache(
        CacheConfig(
            out=str(out / "cache"),
            hookpoints=[a.hookpoint],
            model=a.model,
            tokens=a.tokens,
            context=256,
            batch_tokens=4096,
            threads=a.threads,
        )
    )
    cache_wall = time.time() - t
    t = time.time()
    train(TrainConfig(out=str(out / "cached"), from_activations=str(out / "cache"), **common))
    cached_wall = time.time() - t
    s, c, m = (
        read_json(out / "stream/manifest.json"),
        read_json(out / "cached/manifest.json"),
        read_json(out / "cache/manifest.json"),
    )
    res = {
        "tokens": a.tokens,
        "hookpoint": a.hookpoint,
        "latents": a.latents,
        "threads": a.threads,
        "stream_tokens_per_s": round(s["tokens_per_s"]),
        "cache_write_tokens_per_s": round(m["tokens_per_s"]),
        "cache_write_wall_s": round(cache_wall, 1),
        "from_cache_tokens_per_s": round(c["tokens_per_s"]),
        "from_cache_wall_s_incl_setup": round(cached_wall, 1),
        "cache_bytes": m["bytes"],
        "speedup_per_run": round(c["tokens_per_s"] / s["tokens_per_s"], 2),
        "stream_final_fvu": s["saes"][next(iter(s["saes"]))]["final"]["fvu"],
        "cached_final_fvu": c["saes"][next(iter(c["saes"]))]["final"]["fvu"],
    }
    for n in (1, 4, 16):  # a sweep of n runs: stream every time vs cache once + n cached runs
        res[f"sweep{n}_speedup"] = round(
            (n * a.tokens / s["tokens_per_s"]) / (a.tokens / m["tokens_per_s"] + n * a.tokens / c["tokens_per_s"]), 2
        )
    print(json.dumps(res))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
