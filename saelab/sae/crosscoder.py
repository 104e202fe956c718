"""Crosscoders (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing").

One dictionary reads several sites at once and reconstructs every one of them. Its input is the
concatenation of the sites' activations ([rows, n_sites * d], site order = `sites(cfg)`), so

    pre_j = sum_l (x_l - b_dec_l) @ W_enc_l[:, j] + b_enc_j       (one encoder per site, summed)
    x_hat_l = sum_j f_j W_dec_l[j] + b_dec_l                        (one decoder per site)

which is exactly an SAE on the concatenated vector with block-structured weights: W_enc [n*d, d_sae]
is the stacked per-site encoders, W_dec [d_sae, n*d] the per-site decoders side by side.

Sparsity: TopK on the pre-activation weighted by the latent's summed per-site decoder norms,
select top-k of relu(pre_j) * sum_l ||W_dec_l[j]||, with f_j = relu(pre_j). This is Lindsey et
al.'s L1 weighting (sum over layers of f_j ||W_dec_l[j]||) turned into a TopK selection, the simpler
form the issue allows: a latent that writes to several sites competes with its total output, not
its norm at one site. The whole decoder row is kept at unit norm, so the per-site norms are what
distinguishes a one-site latent from a cross-layer one.

Loss: the local objective's FVU on the concatenation. Each site is scaled to mean squared norm d on
its own (`in_scale` is a [n*d] vector, one value per site repeated), so the total squared error is
the sum of per-site MSEs with every site weighted alike, as in the paper's sum over layers.

The sites are one SaeConfig.hookpoint joined by SEP ('model.layers.4+model.layers.6+...'), so the
folder format, checkpoints and member machinery stay those of any SAE.
"""

from __future__ import annotations

import torch

from .base import SaeConfig, geometric_median
from .kind import LOCAL_ONLY, Capabilities, ForeignNames, NoOptions
from .latents import Latents, gather_preacts
from .topk import TopKSae

SEP = "+"


def sites(cfg: SaeConfig) -> list[str]:
    """The sites a crosscoder reads and writes, in the order of its concatenated input."""
    return cfg.hookpoint.split(SEP)


class CrosscoderSae(TopKSae):
    Options = NoOptions
    # e2e would need an acausal splice at every site within one forward: local only; no one site to
    # record examples at or steer: no latent cache
    capabilities = Capabilities(
        uses_k=True,
        losses=LOCAL_ONLY,
        transcoder=False,
        multi_site=True,
        latent_cache=False,
        torchrun=(),
        one_process_why="the distributed activation stream hands each SAE "
        "one site, a crosscoder needs all of them in one batch",
    )
    foreign = ForeignNames(saelens="crosscoder", saelab_only="crosscoder (one dictionary over several hookpoints)")

    def __init__(self, cfg: SaeConfig):
        if cfg.is_transcoder:
            raise ValueError("a crosscoder reconstructs the sites it reads; transcoder sites are not supported")
        n = len(sites(cfg))
        if cfg.d_in % n:
            raise ValueError(f"crosscoder d_in={cfg.d_in} is not {n} sites of equal width")
        super().__init__(cfg)
        self.n_sites, self.d_site = n, cfg.d_in // n
        self.register_buffer("in_scale", torch.ones(cfg.d_in))  # per site, repeated over its d_site entries
        self.register_buffer("out_scale", torch.ones(cfg.d_in))
        # The training scales, kept after saving (where in/out_scale become 1): the selection weighs
        # decoder norms in the scaled space, so a saved crosscoder selects exactly as it trained.
        self.register_buffer("site_scale", torch.ones(cfg.d_in))

    @torch.no_grad()
    def init_from_data(self, x, y, bias_init="median"):
        per_site = x.view(-1, self.n_sites, self.d_site).pow(2).sum(-1).mean(0)  # [n] E||x_l||^2
        s = (self.d_site / per_site).sqrt().repeat_interleave(self.d_site)
        self.in_scale.copy_(s)
        self.out_scale.copy_(s)
        self.site_scale.copy_(s)
        xs = x * s
        self.b_dec.copy_(geometric_median(xs) if bias_init == "median" else xs.mean(0))

    def site_norms(self) -> torch.Tensor:
        """[d_sae, n_sites] decoder norm of each latent at each site, in the training (scaled) space."""
        w = self.W_dec * (self.site_scale / self.out_scale)
        return w.view(self.cfg.d_sae, self.n_sites, self.d_site).norm(dim=-1)

    def encode(self, x_in):
        k = self.cfg.k
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = self.preacts(x_in, bias)
            idx = (pre.relu() * self.site_norms().sum(1)).topk(k, dim=-1, sorted=False).indices
        rows = torch.arange(x_in.shape[0], device=x_in.device).repeat_interleave(k)
        if torch.is_grad_enabled():
            vals = gather_preacts(x_in, self.W_enc, bias, pre, rows, idx.reshape(-1)).relu()
        else:
            vals = pre.gather(1, idx).relu_()
        return Latents(vals.view(-1, k), idx, None, x_in.shape[0], self.cfg.d_sae), x_in.new_zeros(()), pre

    def folded_state(self) -> dict[str, torch.Tensor]:
        """Raw-space weights: per-site scales folded in (x_in = x * s, so W_enc rows scale by s, W_dec
        columns and b_dec by 1/s)."""
        s = self.in_scale
        return {
            "W_enc": self.W_enc.detach() * s[:, None],
            "b_enc": self.b_enc.detach().clone(),
            "W_dec": self.W_dec.detach() / s,
            "b_dec": self.b_dec.detach() / s,
            "site_scale": self.site_scale.clone(),
        }

    def load_extra_tensors(self, tensors):
        self.site_scale.copy_(tensors["site_scale"])

    def extra_state_tensors(self):
        return {"site_scale": self.site_scale.clone()}

    def split_sites(self, y: torch.Tensor) -> list[torch.Tensor]:
        """[rows, n*d] -> one [rows, d] per site."""
        return list(y.view(*y.shape[:-1], self.n_sites, self.d_site).unbind(-2))
