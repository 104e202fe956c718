"""One cross-layer transcoder training step, timed by phase: forward, backward, optimiser.

A 30-layer x 1,024-latent CLT (d 576, TopK k per layer) on random rows, as the training loop runs it
(sae(x, dead, target), the FVU + AuxK loss, the decoder-gradient projection, Adam, decoder renorm), with no
dead latents and with 1/7 of every layer's latents dead (AuxK runs). --profile prints torch.profiler's
top ops of one step.

    python bench/clt_step.py [--threads 2] [--layers 30] [--latents 1024] [--k 16] [--rows 4096] [--reps 2]
    python bench/clt_step.py --block 15      # one source layer's decode into 15 targets, by candidate kernel
"""

from __future__ import annotations

import argparse
import time

import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.clt_kernels import block_decode
from saelab.train.members import new_member


def build(layers: int, latents: int, d: int, k: int):
    cfg = SaeConfig(
        arch="clt",
        d_in=layers * d,
        d_sae=layers * latents,
        hookpoint="+".join(f"in{i}" for i in range(layers)),
        d_out=layers * d,
        out_hookpoint="+".join(f"out{i}" for i in range(layers)),
        k=k,
    )
    sae = build_sae(cfg)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    return sae


def step(member, x, target, dead) -> dict[str, float]:
    sae, opt = member.sae, member.opt
    t0 = time.perf_counter()
    out = sae(x, dead, target)
    loss = (out.recon - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum() + out.aux_loss
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    sae.remove_parallel_decoder_grad()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder()
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimiser": t3 - t2, "step": t3 - t0}


def _timed(f, reps: int = 2) -> float:
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def block(T: int, n: int, d: int, rows: int, k: int) -> None:
    """One source layer's block decode [rows, k] code -> [T, rows, d]: embedding_bag (what clt_code runs)
    forward and forward + backward, against CSR products and a weight gradient by embedding_bag over the
    output gradient (the transposed code as bags), and the value gradient by sampled_addmm."""
    import warnings

    import torch.nn.functional as F

    warnings.filterwarnings("ignore")
    W = torch.randn(T, n, d, requires_grad=True)
    idx, vals = torch.randint(0, n, (rows, k)), torch.rand(rows, k, requires_grad=True)
    g = torch.randn(T, rows, d)
    shift = torch.arange(T) * n

    def bag():
        i = (idx.unsqueeze(0) + shift.view(T, 1, 1)).view(T * rows, k)
        v = vals.unsqueeze(0).expand(T, rows, k).reshape(T * rows, k)
        return F.embedding_bag(i, W.view(T * n, d), per_sample_weights=v, mode="sum").view(T, rows, d)

    def bag_both():
        W.grad = vals.grad = None
        bag().backward(g)

    crow = torch.arange(0, rows * k + 1, k)
    A = torch.sparse_csr_tensor(crow, idx.reshape(-1), vals.detach().reshape(-1), (rows, n))
    Wd = W.detach()
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    cnt = torch.bincount(flat, minlength=n)
    offs = torch.zeros(n, dtype=torch.long)
    offs[1:] = cnt.cumsum(0)[:-1]

    def wgrad_bag():  # bag j of target t sums vals x g[t, row] over the entries of latent j
        ii = (torch.div(order, k, rounding_mode="floor").unsqueeze(0) + (torch.arange(T) * rows).view(T, 1)).view(-1)
        oo = (offs.unsqueeze(0) + (torch.arange(T) * rows * k).view(T, 1)).view(-1)
        vv = vals.detach().reshape(-1)[order].repeat(T)
        return F.embedding_bag(ii, g.view(T * rows, d), oo, per_sample_weights=vv, mode="sum")

    def vgrad_sampled():
        M = torch.sparse_csr_tensor(crow, flat, torch.zeros(rows * k), (rows, n))
        return sum(torch.sparse.sampled_addmm(M, g[t], Wd[t].t(), beta=0).values() for t in range(T))

    def block_both():
        W.grad = vals.grad = None
        block_decode(vals.reshape(-1), W, flat, crow[:-1]).backward(g)

    At = A.t().to_sparse_csr()
    for name, f in (
        ("embedding_bag forward", lambda: bag().detach()),
        ("embedding_bag forward + backward", bag_both),
        ("CSR x W_t forward (torch.sparse.mm)", lambda: [torch.sparse.mm(A, Wd[t]) for t in range(T)]),
        ("weight grad CSR^T x g_t (torch.sparse.mm)", lambda: [torch.sparse.mm(At, g[t]) for t in range(T)]),
        ("weight grad embedding_bag over g", wgrad_bag),
        ("value grad sampled_addmm", vgrad_sampled),
        ("clt_kernels.block_decode forward + backward", block_both),
    ):
        print(f"{name:42s} {_timed(f):6.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--latents", type=int, default=1024)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=2, help="timed steps after one warm-up step, per case")
    ap.add_argument("--dead-only", action="store_true", help="only the case with dead latents")
    ap.add_argument("--alive-only", action="store_true", help="only the case without dead latents")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--block", type=int, default=0, help="time one source layer's decode into this many targets")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.block:
        return block(a.block, a.latents, a.d, a.rows, a.k)
    sae = build(a.layers, a.latents, a.d, a.k)
    member = new_member("clt", sae, 1e-4)
    x, target = torch.randn(a.rows, sae.cfg.d_in), torch.randn(a.rows, sae.cfg.d_out)
    cases = {"alive": None, "1/7 dead": torch.arange(sae.cfg.d_sae) % 7 == 0}
    if a.dead_only:
        cases.pop("alive")
    if a.alive_only:
        cases.pop("1/7 dead")
    print(f"{a.layers} layers x {a.latents} latents, d {a.d}, k {a.k}, {a.rows} rows, {a.threads} threads")
    for name, dead in cases.items():
        step(member, x, target, dead)  # warm-up
        runs = [step(member, x, target, dead) for _ in range(a.reps)]
        best = {p: min(r[p] for r in runs) for p in runs[0]}
        print(f"{name:9s} " + "  ".join(f"{p} {s:6.2f} s" for p, s in best.items()))
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(member, x, target, dead)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
