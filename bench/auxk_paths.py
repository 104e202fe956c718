"""AuxK's cost per training step, dense over the dead columns vs the sparse gather, by dead share.

One TopK step (forward + backward, 4,096 rows x 4,608 latents x 576, k = 32, k_aux = 288) with no
dead latents, and with a share of them dead, through each AuxK path (saelab.sae.base.auxk_loss,
the path forced by AUXK_DENSE_UP_TO). Sets the default: dense while dead <= AUXK_DENSE_UP_TO x k_aux.

    python bench/auxk_paths.py [--threads 2] [--reps 5]     # ~2 min on the 2-core CPU
"""

from __future__ import annotations

import argparse
import time

import torch

import saelab.sae.base as base
from saelab.sae import SaeConfig, build_sae


def step_ms(sae, x, target, dead, reps: int) -> float:
    times = []
    for _ in range(reps + 1):  # (the first is a warm-up)
        t = time.perf_counter()
        out = sae(x, dead, target)
        ((out.recon - target).pow(2).sum() / target.var(0).sum() / x.shape[0] + out.aux_loss).backward()
        sae.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--latents", type=int, default=4608)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = 576
    x, y = torch.randn(a.rows, d), torch.randn(a.rows, d)
    sae = build_sae(SaeConfig("topk", d_in=d, d_sae=a.latents, hookpoint="h", k=32))
    sae.init_from_data(x, y)
    target = y * sae.out_scale
    none = step_ms(sae, x, target, None, a.reps)
    k_aux = d // 2
    print(
        f"TopK step, {a.rows:,} rows x {a.latents:,} latents, k 32, k_aux {k_aux}, {a.threads} threads: "
        f"no dead latents {none:.0f} ms (median of {a.reps})\n"
    )
    print(
        "| dead share | dead / k_aux | sparse gather (ms) | dense over dead (ms) | dense / sparse |\n|---|---|---|---|---|"
    )
    for share in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        dead = torch.rand(a.latents) < share
        ms = {}
        for path, up_to in (("sparse", 0), ("dense", 10**9)):
            base.AUXK_DENSE_UP_TO = up_to
            ms[path] = step_ms(sae, x, target, dead, a.reps)
        n = int(dead.sum())
        print(
            f"| {share:.0%} | {n / k_aux:.1f} | {ms['sparse']:.0f} | {ms['dense']:.0f} | {ms['dense'] / ms['sparse']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
