"""Shrinkage of trained dictionaries: the relative reconstruction bias gamma (Rajamanoharan et al. 2024,
`relative_reconstruction_bias` in metrics.json) with L0 and FVU, on the same held-out tokens, for
folders evaluated before the metric existed. Reads the folders only (no metrics.json is written).

    python bench/relative_bias.py RUN/model.layers.6-* ... [--tokens 32768] [--threads 2]

gamma = sum ||x_hat - mean||^2 / sum <x_hat - mean, x - mean> (each side centred by its own mean;
saelab/evaluate/metrics.py `_relative_bias` says why): 1 = unbiased, < 1 = reconstructions shrunk.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saelab.evaluate.metrics import EvalBudget, reconstruction_metrics
from saelab.sae.folder import open_sae, open_shared_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sae_dirs", nargs="+")
    ap.add_argument("--tokens", type=int, default=32_768)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folders = [open_sae(Path(d)) for d in a.sae_dirs]
    data = open_shared_data(folders, "cpu", None, None)
    results, _ = reconstruction_metrics(
        data.lm.model,
        data.lm.tokenizer,
        [(f.sae, f.provenance.sink) for f in folders],
        data.rows,
        EvalBudget(tokens=a.tokens, ce_tokens=0),
    )
    print("| dictionary | L0 | FVU | relative reconstruction bias |\n|---|---|---|---|")
    for d, m in zip(a.sae_dirs, results):
        print(
            f"| {Path(d).parent.name}/{Path(d).name} | {m.l0:.1f} | {m.fvu:.4f} | {m.relative_reconstruction_bias:.3f} |"
        )


if __name__ == "__main__":
    main()
