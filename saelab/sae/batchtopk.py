"""BatchTopK SAE (Bussmann et al. 2024): keep the k x rows largest activations of the whole batch.

Tokens get a variable number of latents (k on average). For inference the batch dependence is
replaced by one threshold (a running mean of the smallest kept activation during training, set by
`finalize` on the last batch at the end); the saved SAE is then a JumpReLU with that threshold for
every latent (how SAELens loads it). The first code is scaled to its least-squares length
(`fit_initial_scale`): the batch-wide selection otherwise overshoots the input at the start.

The batch selection (`batch_select`) never ranks all rows x latents values at once: each row's
top-m pre-activations are its candidates, the threshold is found among them, and the few rows that
may hold more values above it than their m candidates (rows with many large activations) add all
of theirs; the result is exactly the full-batch selection (see `batch_select`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import SparseCoder
from .kind import Capabilities, ForeignNames, NoOptions
from .latents import gather_preacts, latents_of

CANDIDATES_PER_K = 2  # m = 2k candidates per row: at init on LM activations ~1 row in 9 needs more


def batch_select(
    pre: torch.Tensor,
    n_keep: int,
    m: int,
    top_values: Callable[[torch.Tensor, int], torch.Tensor],
    any_rank: Callable[[bool], bool] = bool,
    total_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of every entry v of relu(pre) [rows, d] with v >= t and v > 0, where t is
    the n_keep-th largest value of relu(pre), in row-major order (rows, then columns, ascending).

    Ties at t are all kept, so the set does not depend on how topk orders equal values. t is found
    among candidates: each row's top-m, which give t_c <= t (a subset's n_keep-th largest). A row
    whose smallest candidate is < t_c (or 0) has nothing left out that can reach t_c; a row whose
    smallest candidate is >= t_c and > 0 is open and replaces its candidates by all its values
    >= t_c. The candidates then hold every value >= t_c, at least n_keep of them, so their
    n_keep-th largest is t: exact in one refinement. `top_values(values, n)` is the n largest of
    `values` (latent sharding: over every rank's values) and `any_rank` ORs a flag over the ranks;
    m >= n_keep / rows keeps every call to top_values at n_keep values on every rank. Data-parallel:
    `pre` holds this rank's share of the batch's `total_rows` rows, and `top_values` takes every
    rank's candidates (their union holds total_rows x m >= n_keep values)."""
    n, d = pre.shape
    if m >= d or n == 0:  # every entry is a candidate
        flat = pre.relu().reshape(-1)
        top = top_values(flat, n_keep)
        t = top.min() if top.numel() else flat.new_tensor(float("inf"))
        keep = ((flat >= t) & (flat > 0)).nonzero().squeeze(1)  # ascending: rows sorted
        return keep // d, keep % d, flat[keep]
    if n_keep > (total_rows or n) * m:
        raise ValueError(f"batch_select: {m} candidates per row cannot hold {n_keep} values of {n} rows")
    cand = pre.topk(m, dim=1, sorted=False)
    cv, ci = cand.values.relu_(), cand.indices  # [n, m]
    t = top_values(cv.reshape(-1), n_keep).min()
    smallest = cv.min(1).values
    open_ = (smallest >= t) & (smallest > 0)
    more = None
    if any_rank(bool(open_.any())):
        ur = open_.nonzero().squeeze(1)
        sub = pre[ur]
        r, c = ((sub >= t) & (sub > 0)).nonzero(as_tuple=True)
        more_rows, more_cols, more_vals = ur[r], c, sub[r, c]
        t = top_values(torch.cat([cv[~open_].reshape(-1), more_vals]), n_keep).min()
        cv = cv.masked_fill(open_[:, None], 0.0)  # open rows' candidates are all in `more` (0: never kept)
        sel = more_vals >= t
        more = (more_rows[sel], more_cols[sel], more_vals[sel])
    r, j = ((cv >= t) & (cv > 0)).nonzero(as_tuple=True)
    rows, cols, vals = r, ci[r, j], cv[r, j]
    if more is not None:
        rows, cols, vals = torch.cat([rows, more[0]]), torch.cat([cols, more[1]]), torch.cat([vals, more[2]])
    key, order = (rows * d + cols).sort()  # the full selection's order (embedding_bag sums in it)
    return key // d, key % d, vals[order]


class BatchTopKSae(SparseCoder):
    Options = NoOptions
    # data-parallel: the batch-wide selection runs over every rank's rows (train/row_split.py)
    capabilities = Capabilities(uses_k=True, torchrun=("data", "modules", "latents"))
    foreign = ForeignNames(saelens="jumprelu")  # saved as a JumpReLU with one shared threshold, as SAELens does
    scales_initial_code = True  # the selection is a ranking, unchanged by the fit's positive scale

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    def encode(self, x_in):
        n, d_sae = x_in.shape[0], self.cfg.d_sae
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
        if self.training:
            with torch.no_grad():
                # Keep every activation >= the (k x rows)-th largest: ties at the boundary are all kept,
                # and a latent-sharded run (which finds the same threshold from per-rank candidates)
                # keeps exactly this set.
                k, r = self.cfg.k, self.reductions  # r: over every rank's rows or latents in parallel training
                total = r.batch_rows(n)
                rows, cols, kept = batch_select(pre, k * total, CANDIDATES_PER_K * k, r.top_values, r.any, total)
                lo = r.min(kept.min() if kept.numel() else pre.new_tensor(float("inf")))
                if torch.isfinite(lo):
                    # running mean of the smallest kept activation: the inference threshold
                    self.threshold_steps += 1
                    self.threshold += (lo - self.threshold) / self.threshold_steps.clamp_max(1000)
        else:
            rows, cols = (pre > self.threshold).nonzero(as_tuple=True)
        if torch.is_grad_enabled():
            vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, cols).relu()
        else:
            vals = pre[rows, cols].relu()
        return latents_of(vals, rows, cols, n, d_sae), x_in.new_zeros(()), pre

    @torch.no_grad()
    def fit_initial_scale(self, x, y):
        c = super().fit_initial_scale(x, y)
        # the fit's own encode entered its unscaled smallest kept value into the running threshold
        self.threshold.zero_()
        self.threshold_steps.zero_()
        return c

    @torch.no_grad()
    def finalize(self, x):
        """Set the inference threshold so that, on these inputs, it keeps exactly the k x rows
        activations that batch selection keeps (the running mean lags behind a short run).

        The midpoint between the smallest kept value and the next one down (as `firing_thresholds`):
        on the smallest kept value itself, `pre > threshold` dropped that entry, and a saved and
        reloaded copy (whose folded weights round differently) could keep it."""
        pre = self.preacts(self.encoder_input(x)).relu().reshape(-1)
        n_keep = self.cfg.k * self.reductions.batch_rows(x.shape[0])
        top = self.reductions.top_values(pre, n_keep + 1).sort(descending=True).values  # relu'd: all >= 0
        kept = top[:n_keep]
        kept = kept[kept > 0]
        if kept.numel():
            below = top[n_keep].item() if top.numel() > n_keep else 0.0
            self.threshold.fill_((kept.min().item() + below) / 2)

    def extra_state_tensors(self):
        return {"threshold": self.threshold.expand(self.cfg.d_sae).clone()}

    def load_extra_tensors(self, tensors):
        t = tensors.get("threshold")
        if t is not None:
            self.threshold.fill_(float(t.reshape(-1)[0]))
