"""One small base class for every dictionary: SAE (target = input) or transcoder (target = another site).

Parameters follow the on-disk layout (SAELens-compatible): W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_out], b_dec [d_out]. During training inputs and targets are scaled to mean
squared norm d (`in_scale`, `out_scale`); the scales are folded into the weights when saving, so a
saved dictionary works on raw activations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
from torch import nn

from .latents import Latents, decode_sparse, gather_preacts
from .reductions import LOCAL, Local


@dataclass
class SaeConfig:
    arch: str  # an --arch name (registry.py)
    d_in: int
    d_sae: int
    hookpoint: str  # where the input is read (module name, optional `:input`)
    d_out: int | None = None  # target width; defaults to d_in
    out_hookpoint: str | None = None  # transcoder target site; None = reconstruct the input
    k: int | None = None  # active latents per token (topk, batchtopk)
    sparsity_coeff: float = 0.0  # L1 (relu) or L0 (jumprelu) penalty weight, relative to FVU
    aux_k: int | None = None  # AuxK: latents used to model the residual (default d_in // 2)
    aux_coeff: float = 1 / 32  # AuxK loss weight (Gao et al. 2024)
    jumprelu_init_threshold: float = 0.001  # threshold before init_from_data (and its floor there)
    jumprelu_bandwidth: float = 0.001  # STE kernel width for inputs of unit mean squared norm (the paper's
    # constant); training inputs have mean squared norm d: x sqrt(d_in)
    jumprelu_threshold_lr: float = 1.0  # the thresholds' learning rate as a multiple of the run's (training only)
    jumprelu_init_fire: float | None = 0.1  # init_from_data: each latent's threshold at this upper quantile
    # of its first-batch pre-activations (None: keep the constant)
    gated_init_fire: float | None = None  # init_from_data: each gate's bias set so it opens on this fraction
    # of the first batch (None: zero gate biases, SAELens' start)
    groups: list[int] | None = None  # matryoshka: latent group sizes (prefixes), summing to d_sae
    skip: bool = False  # skip transcoder: + x @ W_skip.T (Paulo et al. 2025), W_skip [d_out, d_in]
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.d_out is None:
            self.d_out = self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.out_hookpoint is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SaeConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SaeOutput(NamedTuple):
    recon: torch.Tensor  # [rows, d_out], in the (scaled) training space
    latents: Latents
    sparsity_loss: torch.Tensor  # scalar (0 when sparsity is fixed by k)
    aux_loss: torch.Tensor  # scalar AuxK loss (0 when no latent is dead)
    extra_loss: torch.Tensor | None = None  # architecture's own reconstruction terms in FVU units
    # (matryoshka prefixes, gated auxiliary); needs the target


class SparseCoder(nn.Module):
    """Subclasses implement `encode` (-> Latents + sparsity loss); decoding is shared. A registered
    type also declares, in its own class body, its `Options`, `capabilities` and `foreign` names (kind.py)."""

    uses_unit_norm_decoder = True
    init_from_refused = ""  # why --init-from cannot start a run from a saved dictionary of this type ("": it can)
    scales_initial_code = False  # variable L0: fit_initial_scale shrinks the first code (penalty types, BatchTopK)

    def __init__(self, cfg: SaeConfig):
        super().__init__()
        self.cfg = cfg
        self.make_parameters()
        self.reset_parameters()
        # the reductions over latents and over the batch (reductions.py): one process unless parallel
        # training gives this dictionary another
        self.reductions: Local = LOCAL

    def make_parameters(self) -> None:
        """Create the parameters and the scale buffers (a type with another layout, such as the
        cross-layer transcoder, creates its own; `folded_shapes` then names what its folder holds)."""
        cfg = self.cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        if cfg.skip:  # SAELens / sparsify layout; initialised to the best linear fit in init_from_data
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("out_scale", torch.ones(()))

    @classmethod
    def folded_shapes(cls, cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
        """The tensors `folded_state` writes (besides `extra_state_tensors`), by name, with their shapes:
        what `open_sae` checks a weights file against."""
        shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_out)}
        shapes["b_dec"] = (cfg.d_out,)
        if cfg.skip:
            shapes["W_skip"] = (cfg.d_out, cfg.d_in)
        return shapes

    @classmethod
    def latents_for(cls, per_site: int, hookpoint: str) -> int:
        """d_sae of a dictionary at `hookpoint` trained with `--dict-size per_site` (a CLT: per layer)."""
        return per_site

    @classmethod
    def check_training_memory(cls, run, n_sites: int, d_in: int, d_out: int) -> None:
        """Refuse (UserError) a training run (`run`: the TrainConfig) of this type over `n_sites` joined sites
        of widths d_in -> d_out whose dictionary cannot fit the device; called before the model loads (widths
        from its config on disk) and after (the sites' widths). Nothing here: one batch's encoder
        activations are checked for every type (train/config_checks.py)."""

    # ------------------------------------------------------------ init
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        w = torch.randn(self.cfg.d_sae, self.cfg.d_out, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        with torch.no_grad():
            self.W_dec.copy_(w)
            if self.cfg.is_transcoder:
                enc = torch.randn(self.cfg.d_in, self.cfg.d_sae, generator=generator)
                # a skip transcoder starts as its skip (the best linear fit): quiet latents, 1/10 the encoder
                self.W_enc.copy_(enc / enc.norm(dim=0, keepdim=True) * (0.1 if self.cfg.skip else 1.0))
            else:
                self.W_enc.copy_(w.t())  # tied init (Conerly et al. 2024; Gao et al. 2024)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, bias_init: str = "median") -> None:
        """Scales from the data (E||x||^2 = d) and b_dec at the targets' geometric median or mean."""
        self.in_scale.fill_((self.cfg.d_in / x.pow(2).sum(-1).mean()).sqrt().item())
        self.out_scale.fill_((self.cfg.d_out / y.pow(2).sum(-1).mean()).sqrt().item())
        ys = y * self.out_scale
        if self.cfg.skip:  # the skip starts as the least-squares linear map x -> y; latents model the rest
            xs = x * self.in_scale
            fit = torch.linalg.lstsq(xs - xs.mean(0), ys - ys.mean(0)).solution  # [d_in, d_out]
            self.W_skip.copy_(fit.t())
            ys = ys - xs @ fit
        center = geometric_median(ys) if bias_init == "median" else ys.mean(0)
        self.b_dec.copy_(center)
        self.init_code(x)
        self.fit_initial_scale(x, y)
        self.reductions.replicate(self.in_scale, self.out_scale, self.b_dec)

    def init_code(self, x: torch.Tensor) -> None:
        """Data-dependent start of the type's own code parameters (JumpReLU's thresholds); none here."""

    @torch.no_grad()
    def fit_initial_scale(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Variable-L0 types (`scales_initial_code`): shrink the initial code to the least-squares scale.

        With the tied init a row's code is its many largest projections on random unit directions,
        whose sum overshoots the input (first-batch FVU > 1 at layer 6). Gradient descent then pushes
        the pre-activations of active latents down and a JumpReLU / gated / ReLU code collapses before
        the decoder has learnt anything (JumpReLU, layer 6, 250k tokens: L0 9, 21% dead at every
        penalty coefficient from 0.001 to 0.1; docs/research/dictionaries.md). BatchTopK's batch-wide selection
        gives the largest-norm rows hundreds of latents, so its first code overshoots too (16,384
        latents at layer 6: training FVU 8.6 after 8 steps, docs/research/dictionaries.md). Scaling the encoder by the
        best scalar c = <code recon, target> / <code recon, code recon> keeps the active set and
        starts the reconstruction at its best length. Returns c (1.0 when not applied)."""
        if not self.scales_initial_code:
            return 1.0
        x_in = self.encoder_input(x)
        target = y * self.out_scale - self.b_dec
        if self.cfg.skip:
            target = target - x_in @ self.W_skip.t()
        recon = self.decode(self.encode(x_in)[0]) - self.b_dec  # decode: summed over a latent-sharded run's ranks
        c = float((recon * target).sum() / (recon * recon).sum().clamp_min(1e-12))
        c = min(max(c, 1e-3), 1.0)  # only shrink: a short code is left alone
        self.rescale_code(c)
        return c

    def rescale_code(self, c: float) -> None:
        """Multiply every latent activation by c > 0 without changing which latents are active."""
        self.W_enc.mul_(c)
        self.b_enc.mul_(c)

    # ------------------------------------------------------------ forward
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled input. (An SAE also centres it by b_dec; that is folded into `encoder_bias`.)"""
        return x * self.in_scale

    def encoder_bias(self) -> torch.Tensor:
        """b_enc - b_dec @ W_enc for an SAE (SAELens `apply_b_dec_to_input`), b_enc for a transcoder.

        (x - b_dec) @ W_enc + b_enc == x @ W_enc + encoder_bias(): centring through the bias keeps
        the input out of autograd, so b_dec's gradient costs a [d_in, d_sae] product per step
        instead of a [rows, d_in] one through the sparse encoder."""
        return self.b_enc if self.cfg.is_transcoder else self.b_enc - self.b_dec @ self.W_enc

    def preacts(self, x_in: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.addmm(self.encoder_bias() if bias is None else bias, x_in, self.W_enc)

    def encode(self, x_in: torch.Tensor) -> tuple[Latents, torch.Tensor, torch.Tensor]:
        """-> (latents, sparsity loss, pre-activations [rows, d_sae] without grad)."""
        raise NotImplementedError

    def decode(self, lat: Latents) -> torch.Tensor:
        r = self.reductions  # a latent slice decodes its part; b_dec enters once
        return r.latent_sum(decode_sparse(lat, self.W_dec)) + r.shared(self.b_dec)

    def predict(self, x_in: torch.Tensor, lat: Latents) -> torch.Tensor:
        """The output in the scaled space: the decoded latents, plus the skip of a skip transcoder."""
        out = self.decode(lat)
        return out + x_in @ self.W_skip.t() if self.cfg.skip else out

    def skip_raw(self, x: torch.Tensor) -> torch.Tensor | float:
        """The skip term on raw activations (0 without a skip), for callers that decode latents themselves."""
        return (x * self.in_scale) @ self.W_skip.t() / self.out_scale if self.cfg.skip else 0.0

    def forward(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> SaeOutput:
        """x: raw activations [rows, d_in]. `dead` [d_sae] bool enables AuxK; `target` is the
        scaled target (needed only for AuxK)."""
        x_in = self.encoder_input(x)
        lat, sparsity, pre = self.encode(x_in)
        recon = self.predict(x_in, lat)
        aux = extra = recon.new_zeros(())
        if dead is not None and target is not None and self.reductions.latent_total(int(dead.sum())):
            aux = self.auxk_loss(x_in, pre, target - recon.detach(), dead)
        if target is not None:
            extra = self.extra_loss(x_in, lat, recon, target)
        return SaeOutput(recon, lat, sparsity, aux, extra)

    def extra_loss(self, x_in: torch.Tensor, lat: Latents, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Architecture-specific reconstruction terms (FVU units) added to the local objective's loss."""
        return recon.new_zeros(())

    def auxk_loss(
        self, x_in: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor
    ) -> torch.Tensor:
        """Let the top dead latents model the reconstruction error (Gao et al. 2024, AuxK).

        Each row's k_aux dead latents with the highest pre-activations. While the dead are few (at most
        AUXK_DENSE_UP_TO x k_aux), all of their columns are computed densely, the unselected entries
        masked to 0: BLAS products over [rows, dead] beat gathering and scattering rows x k_aux entries.
        One TopK step of 4,096 x 4,608 x 576 took 324 ms with no dead latents; with 5% dead 789 ms through
        the gather, 408 ms dense; dense was faster at every share measured, up to 50% (8 x k_aux)
        (`python bench/auxk_paths.py`, docs/research/dictionaries.md). Same selection and maths either way
        (tests/test_auxk_paths.py).
        """
        r = self.reductions  # a latent slice: the counts, the top-k and the decode span every rank's latents
        cols = dead.nonzero().squeeze(1)
        n_dead = r.latent_total(len(cols))
        k_aux = min(self.cfg.aux_k or self.cfg.d_in // 2, n_dead)
        if n_dead <= AUXK_DENSE_UP_TO * k_aux:
            sub = torch.addmm(self.encoder_bias()[cols], x_in, self.W_enc[:, cols])  # [rows, dead], with grad
            values = self.auxk_values(sub)
            if k_aux < n_dead:
                with torch.no_grad():
                    keep = r.row_topk(sub, k_aux).mask(sub)
                values = values * keep
            pred = values @ self.W_dec[cols]
        else:
            with torch.no_grad():
                pick = r.row_topk(pre[:, cols], k_aux)
            idx = cols[pick.cols]
            chosen = gather_preacts(x_in, self.W_enc, self.encoder_bias(), pre, pick.row_ids(), idx.reshape(-1))
            pred = decode_sparse(pick.latents(self.auxk_values(chosen), idx, x_in.shape[0], self.cfg.d_sae), self.W_dec)
        pred = self.auxk_rescale(r.latent_sum(pred), residual)
        denom = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return self.cfg.aux_coeff * (pred - residual).pow(2).sum() / denom

    def auxk_values(self, chosen: torch.Tensor) -> torch.Tensor:
        """The dead latents' activations from their chosen pre-activations (elementwise)."""
        return chosen.relu()

    def auxk_rescale(self, pred: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The dead latents' model of the residual, [rows, d_out], as it enters the loss."""
        return pred

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Raw-space reconstruction (or transcoder prediction) of raw activations x [..., d_in]."""
        shape = x.shape
        x_in = self.encoder_input(x.reshape(-1, shape[-1]))
        out = self.predict(x_in, self.encode(x_in)[0]) / self.out_scale
        return out.reshape(*shape[:-1], self.cfg.d_out)

    @torch.no_grad()
    def encode_raw(self, x: torch.Tensor) -> Latents:
        return self.encode(self.encoder_input(x.reshape(-1, x.shape[-1])))[0]

    @torch.no_grad()
    def finalize(self, x: torch.Tensor) -> None:
        """Called once after training with recent raw inputs [rows, d_in]: architectures whose
        inference rule differs from training (BatchTopK) calibrate it here."""

    def optimizer_groups(self) -> list[dict]:
        """Adam's parameter groups; a group's `lr_scale` multiplies the run's scheduled rate (loop.py)."""
        return [{"params": list(self.parameters())}]

    # ------------------------------------------------------------ decoder norm
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.uses_unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient along each unit decoder row, so the step keeps norms ~1."""
        if self.uses_unit_norm_decoder and self.W_dec.grad is not None:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    # ------------------------------------------------------------ folding for save
    def folded_state(self) -> dict[str, torch.Tensor]:
        """Weights that act on raw activations (scales folded in), SAELens names."""
        s_in, s_out = self.in_scale.item(), self.out_scale.item()
        W_enc = self.W_enc.detach() * s_in
        b_dec = self.b_dec.detach() / s_out
        # The SAE centres its (scaled) input by b_dec; in raw space that is b_dec / s_in = b_dec / s_out.
        out = {
            "W_enc": W_enc,
            "b_enc": self.b_enc.detach().clone(),
            "W_dec": self.W_dec.detach() / s_out,
            "b_dec": b_dec,
        }
        if self.cfg.skip:
            out["W_skip"] = self.W_skip.detach() * (s_in / s_out)
        out.update(self.extra_state_tensors())
        return out

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of folded_state: load raw-space weights with unit scales."""
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if self.cfg.skip else ()):
                getattr(self, name).copy_(tensors[name])
            self.in_scale.fill_(1.0)
            self.out_scale.fill_(1.0)
        self.load_extra_tensors(tensors)

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


AUXK_DENSE_UP_TO = 8  # AuxK is dense over the dead columns while they number <= this x k_aux (measured up to 8)
INIT_ROWS = 4096  # first-batch rows used to place data-dependent initial thresholds (a quantile per latent)


def firing_thresholds(pre: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per latent (column), a value its pre-activations exceed on `fraction` of the rows: a latent
    whose threshold is this starts firing on that fraction of tokens (initial L0 = fraction x d_sae).
    The midpoint between two consecutive order statistics, not one of them: a row sitting exactly on
    the threshold would fire or not by the rounding of whatever rescales it next (fit_initial_scale),
    which made two runs on identical data diverge (module-parallel gated, tests/test_architectures.py)."""
    n = pre.shape[0]
    rank = min(n, max(1, math.ceil((1 - fraction) * n)))
    below = pre.kthvalue(rank, dim=0).values  # kthvalue: torch.quantile refuses inputs over 2^24 values
    return below if rank == n else (below + pre.kthvalue(rank + 1, dim=0).values) / 2


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 30, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() < eps * m.norm().clamp_min(1.0):
            return new
        m = new
    return m
