"""A small L2-regularised logistic regression in torch (sklearn is not installed here), and the
difference-of-class-means latent selection that sparse probing and absorption share.

Features are standardised with the training split's mean and std, so one regularisation strength
fits latents of any scale; the weights are mapped back to the raw feature space for callers that
need a direction (the first-letter probe)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Probe:
    W: torch.Tensor  # [d, classes] on standardised features (classes = 1 for a binary probe)
    b: torch.Tensor  # [classes]
    mean: torch.Tensor  # [d]
    std: torch.Tensor  # [d]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.W + self.b

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        return (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(1)

    def raw_directions(self) -> torch.Tensor:
        """[classes, d]: each class's weight vector in the raw feature space (W / std)."""
        return (self.W / self.std[:, None]).t()


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int = 2, l2: float = 1e-3, iters: int = 60) -> Probe:
    """Binary (n_classes = 2, y in {0, 1}) or multinomial logistic regression, full batch.
    The penalty is l2 * |W|^2 on standardised features (the bias is not penalised)."""
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    # one thread: thread hand-offs cost more than the arithmetic of these small products (~30x on a
    # busy machine). Newton for small binary probes (exact, a handful of steps); L-BFGS when the
    # (d+1)^2 Hessian would dominate (full-site ceilings: 576 or 1536 features) and for the multinomial probe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if n_classes == 2 and x.shape[1] <= 256:
            return _newton(xs, y.float(), l2, mean, std)
        return _lbfgs(xs, y, n_classes, l2, iters, mean, std)
    finally:
        torch.set_num_threads(threads)


def _lbfgs(xs, y, n_classes, l2, iters, mean, std) -> Probe:
    out = 1 if n_classes == 2 else n_classes
    W = torch.zeros(xs.shape[1], out, requires_grad=True)
    b = torch.zeros(out, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, line_search_fn="strong_wolfe")
    target = y.float()[:, None] if out == 1 else y.long()

    def closure():
        opt.zero_grad()
        z = xs @ W + b
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(z, target)
            if out == 1
            else torch.nn.functional.cross_entropy(z, target)
        ) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(W.detach(), b.detach(), mean, std)


def _newton(xs: torch.Tensor, y: torch.Tensor, l2: float, mean, std, iters: int = 30) -> Probe:
    n, d = xs.shape
    X = torch.cat([xs, torch.ones(n, 1)], 1).double()
    yd = y.double()
    w = torch.zeros(d + 1, dtype=torch.float64)
    reg = torch.full((d + 1,), 2 * l2, dtype=torch.float64)
    reg[-1] = 0.0
    for _ in range(iters):
        p = torch.sigmoid(X @ w)
        g = X.t() @ (p - yd) / n + reg * w
        H = (X.t() * (p * (1 - p))) @ X / n + torch.diag(reg + 1e-9)
        step = torch.linalg.solve(H, g)
        w = w - step
        if float(step.abs().max()) < 1e-7:
            break
    return Probe(w[:d, None].float(), w[d:].float(), mean, std)


def accuracy(probe: Probe, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((probe.predict(x.float()) == y).float().mean())


def top_mean_difference(z: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The k features whose mean differs most (in absolute value) between y == 1 and y == 0 rows
    (Gurnee et al. 2023; SAEBench's sparse probing): indices, largest difference first."""
    diff = (z[y == 1].float().mean(0) - z[y == 0].float().mean(0)).abs()
    return diff.topk(min(k, z.shape[1])).indices


def diff_of_means_accuracy(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor) -> float:
    """Held-out accuracy of the difference-of-means direction, the supervised baseline with no weights
    fitted and no sparsity: u = mean(x | y=1) - mean(x | y=0) on the training rows, examples scored by
    x . u and cut at the threshold that classifies the training rows best (one number fitted)."""
    u = x_tr[y_tr == 1].double().mean(0) - x_tr[y_tr == 0].double().mean(0)
    s_tr, s_te = x_tr.double() @ u, x_te.double() @ u
    s, order = s_tr.sort()
    y = y_tr[order].double()
    # cut after i sorted rows (i = 0..n): below -> 0, above -> 1; correct = zeros below + ones above
    zeros_below = torch.cat([torch.zeros(1, dtype=y.dtype), (1 - y).cumsum(0)])
    ones_above = y.sum() - torch.cat([torch.zeros(1, dtype=y.dtype), y.cumsum(0)])
    i = int((zeros_below + ones_above).argmax())
    lo = s[i - 1] if i > 0 else s[0] - 1
    hi = s[i] if i < len(s) else s[-1] + 1
    pred = (s_te > (lo + hi) / 2).long()
    return float((pred == y_te).float().mean())
