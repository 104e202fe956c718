"""Issue 13: the penalty architectures' training step through the sparse kernels against the dense
path they had before (dense pre-activations with autograd, `from_dense`, gated's dense auxiliary
decode; copied below as the `Dense*` classes), one process, interleaved repetitions on one batch.

One step = the local objective's forward and loss (objectives.sae_loss), backward, decoder-gradient
projection, Adam, renormalisation (as the training loop). 4,096 rows, d_in 576, 4,608 latents, random
Gaussian inputs; biases (relu, gated's gate) or thresholds (jumprelu) set per latent at its upper
L0 / d_sae quantile on the batch, so ~L0 latents fire per row (--l0, default 32). The learning rate is
tiny (1e-7) so the steps do not move L0 between repetitions. The machine is shared: read the ratios,
not the seconds.

    python bench/penalty_sparse_paths.py                 # L0 32, 5 repetitions
    python bench/penalty_sparse_paths.py --l0 1700       # the untuned coefficients' early L0 (dense backward)
    python bench/penalty_sparse_paths.py --density       # gather_preacts' backward: sparse vs dense, by density
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saelab.sae import SaeConfig
from saelab.sae.gated import GatedSae
from saelab.sae.jumprelu import JumpReLUSae, _JumpReLU, _Step
from saelab.sae.latents import from_dense, gather_preacts
from saelab.sae.relu import ReluSae
from saelab.train.objectives import sae_loss


# ---------------------------------------------------------------- the dense paths before issue 13's change
class DenseRelu(ReluSae):
    def encode(self, x_in):
        pre = self.preacts(x_in)
        acts = pre.relu()
        sparsity = self.cfg.sparsity_coeff * (acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        return from_dense(acts), sparsity, pre.detach()


class DenseJumpReLU(JumpReLUSae):
    def encode(self, x_in):
        pre = self.preacts(x_in)
        bw = self.bandwidth()
        acts = _JumpReLU.apply(pre, self.log_threshold, bw)
        sparsity = self.cfg.sparsity_coeff * _Step.apply(pre, self.log_threshold, bw).sum(-1).mean()
        return from_dense(acts), sparsity, pre.detach()


class DenseGated(GatedSae):
    def encode(self, x_in):
        p = x_in @ self.W_enc - self.b_dec @ self.W_enc
        gate, mag = p + self.b_enc, p * self.r_mag.exp() + self.b_mag
        acts = (gate > 0).to(mag.dtype) * mag.relu()
        self._dense_gate = gate.relu()
        sparsity = self.cfg.sparsity_coeff * (self._dense_gate * self.W_dec.norm(dim=1)).sum(-1).mean()
        return from_dense(acts), sparsity, gate.detach()

    def extra_loss(self, x_in, lat, recon, target):
        via_gate = self._dense_gate @ self.W_dec.detach() + self.b_dec.detach()
        return (via_gate - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)


PATHS = {"relu": (DenseRelu, ReluSae), "jumprelu": (DenseJumpReLU, JumpReLUSae), "gated": (DenseGated, GatedSae)}


def build(cls, arch: str, x: torch.Tensor, l0: int, d_sae: int) -> torch.nn.Module:
    """A dictionary (same seed for both paths) with ~l0 latents firing per row of x."""
    torch.manual_seed(0)
    sae = cls(SaeConfig(arch, d_in=x.shape[1], d_sae=d_sae, hookpoint="h", sparsity_coeff=0.1))
    sae.init_from_data(x, x, bias_init="mean")
    with torch.no_grad():
        pre = sae.preacts(sae.encoder_input(x), torch.zeros(d_sae) - sae.b_dec @ sae.W_enc)
        cut = pre.kthvalue(x.shape[0] - round(l0 / d_sae * x.shape[0]), dim=0).values  # upper l0/d_sae quantile
        if arch == "jumprelu":
            sae.log_threshold.copy_(cut.clamp_min(1e-3).log())
        else:
            sae.b_enc.copy_(-cut)
    return sae


def step(sae, opt, x, dead) -> float:
    loss, _, out = sae_loss(sae, x, x, dead)
    loss.backward()
    sae.remove_parallel_decoder_grad()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder()
    return out.latents.values.gt(0).sum().item() / x.shape[0]


def compare(a) -> None:
    torch.manual_seed(1)
    x = torch.randn(a.rows, a.d_in)
    dead = torch.zeros(a.d_sae, dtype=torch.bool)
    runs = {}
    for arch in a.arch:
        for path, cls in zip(("dense", "sparse"), PATHS[arch]):
            sae = build(cls, arch, x, a.l0, a.d_sae)
            runs[arch, path] = (sae, torch.optim.Adam(sae.parameters(), lr=1e-7), [], [])
            step(*runs[arch, path][:2], x, dead)  # warm-up (allocator, first-call costs)
    for _ in range(a.reps):  # interleaved: drift on the shared machine hits both paths alike
        for arch in a.arch:
            for path in ("dense", "sparse"):
                sae, opt, times, l0s = runs[arch, path]
                t = time.perf_counter()
                l0s.append(step(sae, opt, x, dead))
                times.append(time.perf_counter() - t)
    print(
        f"rows {a.rows}, d_in {a.d_in}, d_sae {a.d_sae}, target L0 {a.l0}, {a.reps} repetitions, "
        f"{torch.get_num_threads()} threads"
    )
    print("| arch | L0 | dense s/step (median) | sparse s/step (median) | dense / sparse (median of paired) |")
    print("|---|---|---|---|---|")
    for arch in a.arch:
        (_, _, td, ld), (_, _, ts, _) = runs[arch, "dense"], runs[arch, "sparse"]
        paired = statistics.median(d / s for d, s in zip(td, ts))
        print(
            f"| {arch} | {statistics.mean(ld):.1f} | {statistics.median(td):.3f} | {statistics.median(ts):.3f} | "
            f"**{paired:.2f}x** |"
        )


def density(a) -> None:
    """The backward of gather_preacts at a random selection of each density: torch.sparse.mm against
    the dense fallback (dense_above=0), interleaved; the crossover sets DENSE_BACKWARD_ABOVE."""
    torch.manual_seed(0)
    x = torch.randn(a.rows, a.d_in)
    W = torch.randn(a.d_in, a.d_sae, requires_grad=True)
    b = torch.zeros(a.d_sae, requires_grad=True)
    with torch.no_grad():
        pre = torch.addmm(b, x, W)
    print("| selected fraction | sparse backward s | dense backward s | sparse / dense |\n|---|---|---|---|")
    for frac in (0.01, 0.03, 0.06, 0.1, 0.2, 0.4):
        rows, cols = (torch.rand(a.rows, a.d_sae) < frac).nonzero(as_tuple=True)
        g = torch.randn(rows.numel())
        ts = {1.0: [], 0.0: []}
        for _ in range(a.reps):
            for dense_above in ts:
                t = time.perf_counter()
                gather_preacts(x, W, b, pre, rows, cols, dense_above).backward(g)
                ts[dense_above].append(time.perf_counter() - t)
                W.grad = b.grad = None
        s, d = statistics.median(ts[1.0]), statistics.median(ts[0.0])
        print(f"| {frac} | {s:.3f} | {d:.3f} | {s / d:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--l0", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--density", action="store_true", help="time gather_preacts' two backwards by density instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    density(a) if a.density else compare(a)


if __name__ == "__main__":
    main()
