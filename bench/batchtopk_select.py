"""Issue 13: BatchTopK's per-row candidate selection and Matryoshka's one-bag-per-group prefix decodes
against the implementations they replaced (copied here), with TopK's step as the yardstick.

One training step each (forward, FVU + Matryoshka's prefix FVUs, backward; no optimizer) on the same
batch and weights, repeated with the cases interleaved so that drift on a shared machine hits all of
them alike; the ratios of median step times are what to read, not the absolute times.

Inputs: 4,096 rows x 576 (the width of SmolLM2-135M's residual), with per-row norms spread like LM
activations (lognormal), standardised like training (mean squared norm d_in), through a tied-init
SAE with 4,608 latents whose encoder bias is lowered so each row has about --positives positive
pre-activations; or real activations from --acts (a saved [rows, d_in] tensor).

    python bench/batchtopk_select.py                 # ~2-4 min on a 2-core CPU
    python bench/batchtopk_select.py --reps 3 --rows 1024   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.batchtopk import BatchTopKSae
from saelab.sae.latents import Latents, decode_sparse, gather_preacts
from saelab.sae.matryoshka import MatryoshkaSae


class FullBatchTopK(BatchTopKSae):
    """The former encode: one topk over every relu'd value of the batch, a nonzero over all of them."""

    def encode(self, x_in):
        n, d_sae = x_in.shape[0], self.cfg.d_sae
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            flat = pre.relu().reshape(-1)
            top = self.reductions.top_values(flat, self.cfg.k * n)
            t = top.min() if top.numel() else flat.new_tensor(float("inf"))
            keep = ((flat >= t) & (flat > 0)).nonzero().squeeze(1)
            lo = self.reductions.min(flat[keep].min() if keep.numel() else flat.new_tensor(float("inf")))
            if torch.isfinite(lo):
                self.threshold_steps += 1
                self.threshold += (lo - self.threshold) / self.threshold_steps.clamp_max(1000)
        rows, cols = keep // d_sae, keep % d_sae
        vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, cols).relu()
        counts = torch.bincount(rows, minlength=n)
        return Latents(vals, cols, torch.cumsum(counts, 0) - counts, n, d_sae), x_in.new_zeros(()), pre


class MaskedMatryoshka(MatryoshkaSae):
    """The former Matryoshka: the former encode, and a full decode with group-masked weights per group."""

    encode = FullBatchTopK.encode

    def prefix_recons(self, lat):
        _, idx, vals = lat.flat()
        group = torch.bucketize(idx, self.bounds, right=True)
        out, acc = [], self.b_dec.expand(lat.n_rows, -1)
        for g in range(len(self.bounds)):
            w = vals * (group == g).to(vals.dtype)
            acc = acc + decode_sparse(
                Latents(w.view_as(lat.values), lat.indices, lat.offsets, lat.n_rows, lat.d_sae), self.W_dec
            )
            out.append(acc)
        return out[:-1]


def step(sae, x, target) -> float:
    """CPU seconds of one training step's forward and backward (the local objective's loss)."""
    sae.zero_grad(set_to_none=True)
    t = time.process_time()  # CPU seconds: steadier than wall time on a loaded machine
    out = sae(x, target=target)
    fvu = (out.recon - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
    (fvu + out.extra_loss).backward()
    return time.process_time() - t


def inputs(a) -> torch.Tensor:
    if a.acts:
        x = torch.load(a.acts)[: a.rows].float()
        return x * (a.d_in / x.pow(2).sum(1).mean()).sqrt()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.rows, a.d_in, generator=g) * torch.empty(a.rows, 1).log_normal_(0, 0.35, generator=g)
    return x * (a.d_in / x.pow(2).sum(1).mean()).sqrt()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--latents", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--positives", type=int, default=300, help="positive pre-activations per row (synthetic inputs)")
    ap.add_argument("--acts", default=None, help="a torch.save'd [rows, d_in] activation tensor instead")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = inputs(a)
    base = dict(d_in=x.shape[1], d_sae=a.latents, hookpoint="h", k=a.k)
    ref = build_sae(SaeConfig("topk", **base))
    ref.init_from_data(x, x)
    with torch.no_grad():
        pre = ref.preacts(ref.encoder_input(x))
        if not a.acts:  # lower the bias until a row has ~--positives positive pre-activations
            ref.b_enc -= pre.quantile(1 - a.positives / a.latents, dim=1).median()
            pre = ref.preacts(ref.encoder_input(x))
    state = ref.state_dict()
    cases = {
        "topk": ref,
        "batchtopk (full batch, before)": FullBatchTopK(SaeConfig("batchtopk", **base)),
        "batchtopk (candidates)": build_sae(SaeConfig("batchtopk", **base)),
        "matryoshka (masked decodes, before)": MaskedMatryoshka(SaeConfig("matryoshka", **base)),
        "matryoshka (group bags)": build_sae(SaeConfig("matryoshka", **base)),
    }
    for sae in cases.values():
        sae.load_state_dict(state, strict=False)
        sae.train()
    target = x * ref.out_scale
    # the selection on this batch: how many rows its candidates could not settle (the refinement's size)
    thr = pre.relu().reshape(-1).topk(a.k * x.shape[0]).values.min()
    per_row = (pre >= thr).sum(1)
    print(
        f"{x.shape[0]} rows x {a.latents} latents, k={a.k}: positives/row median {int((pre > 0).sum(1).median())}, "
        f"kept/row median {int(per_row.median())}, max {int(per_row.max())}; "
        f"rows with > 2k kept (refined): {int((per_row > 2 * a.k).sum())}",
        flush=True,
    )
    for sae in cases.values():  # warm-up
        step(sae, x, target)
    times = {name: [] for name in cases}
    for _ in range(a.reps):
        for name, sae in cases.items():
            times[name].append(step(sae, x, target))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\nmedian of {a.reps} interleaved steps ({a.threads} threads); speed = topk time / time")
    print("| step | median CPU s | speed vs topk |\n|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.3f} | {med['topk'] / t:.2f} |")
    b_old, b_new = med["batchtopk (full batch, before)"], med["batchtopk (candidates)"]
    m_old, m_new = med["matryoshka (masked decodes, before)"], med["matryoshka (group bags)"]
    print(f"\nbatchtopk speed-up {b_old / b_new:.2f}x, matryoshka speed-up {m_old / m_new:.2f}x")


if __name__ == "__main__":
    main()
