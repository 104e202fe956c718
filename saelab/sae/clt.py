"""Cross-layer transcoder (Ameisen et al. 2025, "Circuit Tracing"; `--arch clt`).

L layers, n latents per layer. Layer l's latents read that layer's MLP input and write to the MLP output
of every layer l' >= l:

    a_l = sparsity_l(x_l @ W_enc[l] + b_enc_l)                      [rows, n]   (TopK or BatchTopK per layer)
    y_hat_t = sum_{l <= t} a_l @ W_dec[l][t - l] + b_dec_t          [rows, d_out]

One SaeConfig describes it: `hookpoint` = the L MLP-input sites joined by '+', `out_hookpoint` = the L
MLP-output sites, d_in = L x d_site_in, d_out = L x d_site_out, d_sae = L x n; global latent id
g = l x n + j (layer-major). Training reads the concatenated inputs and predicts the concatenated outputs
(train/sources.py joins the sites); each site is scaled to mean squared norm d on its own (in_scale /
out_scale are per-site vectors), so the local objective's FVU on the concatenation is the sum over layers
of each MLP output's normalised error (layers weighted alike).

Parameters (never a dense [L*d, L*n] matrix): `W_enc` a ParameterList of L [d_site_in, n] encoders,
`b_enc` [L*n], `W_dec` a ParameterList of L decoders, W_dec[l] [L-l, n, d_site_out] (source layer l into
targets l..L-1, target-major), `b_dec` [L*d_site_out]. Decoding is sparse: each source layer's active
latents read their decoder rows through one embedding_bag over W_dec[l] viewed [(L-l)*n, d] (a bag per
(target, row)), forward and backward, so a step costs rows x k x sum_l (L-l) x d, not a dense
[rows, L*n] x [L*n, L*d] product. Target-major, each stretch of bags reads one target's [n, d] table,
which stays in cache: 30 layers x 1,024 latents, 4,096 rows, k 32, source layer 0 on the shared 2-core
CPU: forward 0.28 s against 0.41 s through a latent-major [n, 30*576] table, backward 0.90 s against 1.14 s.
Each latent's whole decoder (all its targets) is kept at unit norm in the training space, as an SAE's row.

Saved (sae_weights.safetensors, raw space, scales folded in): W_enc [L, d_site_in, n], b_enc [L*n],
W_dec_0 ... W_dec_{L-1} ([n, L-l, d_site_out]), b_dec [L*d_site_out]; BatchTopK adds `threshold` [L*n]
(each layer's inference threshold, repeated over its latents).

The raw-space API (`encode_layer`, `decode_layer`, `output_bias`, `decoder_norms`, `decoder_vectors`) is
what replacement models, circuit-tracer export and attribution use; it works the same on a model being
trained (scales applied) and on a reopened folder (scales 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..option_checks import memory_bytes
from ..options import opt
from .base import SaeConfig, SaeOutput, SparseCoder, geometric_median
from .clt_code import decode_layers, encode_one_layer, merge_layers, split_layers
from .crosscoder import SEP
from .kind import LOCAL_ONLY, Capabilities, ForeignNames, TypeOptions
from .latents import Latents

SPARSITIES = ("topk", "batchtopk")


def clt_layers(cfg: SaeConfig) -> int:
    """L: the number of MLP-input sites joined in `cfg.hookpoint`."""
    return len(cfg.hookpoint.split(SEP))


def clt_train_bytes(L: int, n: int, d_in: int, d_out: int, rows: int, chunk_rows: int = 0) -> int:
    """Estimated peak memory (bytes, float32) of training one CLT: L layers, n latents per layer, sites of
    width d_in -> d_out, `rows` activation rows per optimiser batch, `chunk_rows` rows of the activation
    stream's shuffled chunk (every site of it held at once).

    weights, their gradients and Adam's two moments: 4 x params, params = L*d_in*n + L*n (encoders)
      + n*d_out*L(L+1)/2 (decoders: layer l writes to L-l layers) + L*d_out;
    per batch row: the concatenated raw inputs and targets and their scaled copies 2*L*(d_in+d_out); the
      target-major output, its [rows, L*d] copy, the error terms, the AuxK prediction and residual, their
      gradients and the largest source layer's decode 12*L*d_out; one layer's pre-activations and selection 4n;
    per chunk row: every site L*(d_in+d_out), three times over while a chunk is built (its parts, their
    concatenation, the shuffled copy: docs/SCALE.md); and 0.5 GiB for the runtime.
    Measured peak (VmHWM) of a step, 30 layers x 1,024 latents, d 576: 7.3 GiB at 4,096 rows without AuxK,
    8.7 GiB with 1/7 of the latents dead (AuxK), 6.1 GiB at 2,048 rows; this estimate: 9.1 and 7.0 GiB. A whole
    run (`saelab train --layers all --arch clt --dict-size 1024 --k 16 --buffer-batches 2`, the model and its
    token rows included) peaked at 11.6 GiB (bench/replacement_throughput.py); this estimate: 12.3 GiB (with
    the chunk counted once it was 10.2 GiB, below the measurement)."""
    params = clt_params(L, n, d_in, d_out)
    per_row = 2 * L * (d_in + d_out) + 12 * L * d_out + 4 * n
    return 4 * (4 * params + rows * per_row + 3 * chunk_rows * L * (d_in + d_out)) + 2**29


def clt_params(L: int, n: int, d_in: int, d_out: int) -> int:
    """Parameter count of a CLT (as clt_train_bytes counts it)."""
    return L * d_in * n + L * n + n * d_out * L * (L + 1) // 2 + L * d_out


def check_clt_memory(L: int, n: int, d_in: int, d_out: int, rows: int, chunk_rows: int, device: str) -> None:
    """Refuse a CLT whose estimated training memory (clt_train_bytes) exceeds the device's memory."""
    need, have = clt_train_bytes(L, n, d_in, d_out, rows, chunk_rows), memory_bytes(device)
    if have and need > have:
        raise UserError(
            f"--arch clt over {L} layers x {n} latents (d {d_in}->{d_out}, {clt_params(L, n, d_in, d_out):,} "
            f"parameters) needs about {need / 2**30:.1f} GiB to train with {rows:,} rows per batch and a "
            f"{chunk_rows:,}-row activation chunk; {device} has {have / 2**30:.1f} GiB. Lower --dict-size, the "
            f"number of layers, --batch-tokens or --buffer-batches"
        )


@dataclass
class CltOptions(TypeOptions):
    clt_sparsity: str = opt(
        "topk", "clt: each layer's sparsity: topk (k per token) or batchtopk (k x rows per batch)", choices=SPARSITIES
    )

    def check(self, run) -> None:
        if self.clt_sparsity not in SPARSITIES:
            raise UserError(f"--clt-sparsity must be one of {', '.join(SPARSITIES)}; got {self.clt_sparsity!r}")
        if not all("->" in h for h in run.hookpoints):
            raise UserError(
                "--arch clt maps every layer's MLP input to the MLP outputs: give --hookpoint as transcoder "
                "sites, e.g. 'model.layers.{0,1,2}.post_attention_layernorm->model.layers.{0,1,2}.mlp'"
            )
        for bad, what in (
            (run.skip, "--skip (a CLT has no skip connection)"),
            (run.init_from, "--init-from (a CLT starts fresh)"),
            (run.model_b, "--model-b (a CLT reads one model)"),
        ):
            if bad:
                raise UserError(f"--arch clt does not combine with {what}")

    def sae_fields(self, fresh: bool) -> dict:
        return {"extra": {"clt_sparsity": self.clt_sparsity}}

    @staticmethod
    def recorded(sae_cfg) -> dict:
        return {"clt_sparsity": sae_cfg.extra.get("clt_sparsity", "topk")}


class CrossLayerTranscoder(SparseCoder):
    Options = CltOptions
    capabilities = Capabilities(
        uses_k=True,
        losses=LOCAL_ONLY,  # e2e needs a causal splice of every layer inside the training forward
        transcoder=True,
        multi_site=True,
        latent_cache=True,  # one dictionary of L*n latents, each at its own layer (features/clt_features.py)
        # --distributed latents: each rank holds n/R latents of every layer (train/latent_shard.py), so memory
        # and work are balanced (a split by layer would not be: layer 0's latents own L decoder blocks, the
        # last layer's one); data and modules: not supported
        torchrun=("latents",),
    )
    init_from_refused = "continuing a saved CLT is not supported yet (train one from scratch, or --resume a run)"
    foreign = ForeignNames(
        saelens="clt", saelab_only="cross-layer transcoder (one dictionary over every layer's MLP; no SAELens form)"
    )

    # ------------------------------------------------------------ layout
    def make_parameters(self) -> None:
        c = self.cfg
        L = clt_layers(c)
        if not c.is_transcoder or len(c.out_hookpoint.split(SEP)) != L:
            raise ValueError(
                f"a CLT maps {L} input sites to as many output sites; got out_hookpoint {c.out_hookpoint!r}"
            )
        for what, total in (("d_in", c.d_in), ("d_out", c.d_out), ("d_sae", c.d_sae)):
            if total % L:
                raise ValueError(f"CLT {what}={total} is not {L} layers of equal width")
        self.n_layers, self.n_per_layer = L, c.d_sae // L
        self.d_site_in, self.d_site_out = c.d_in // L, c.d_out // L
        n, d_in, d_out = self.n_per_layer, self.d_site_in, self.d_site_out
        self.W_enc = nn.ParameterList([nn.Parameter(torch.empty(d_in, n)) for _ in range(L)])
        self.b_enc = nn.Parameter(torch.zeros(c.d_sae))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.empty(L - l, n, d_out)) for l in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(c.d_out))
        self.register_buffer("in_scale", torch.ones(c.d_in))  # per site, repeated over its entries
        self.register_buffer("out_scale", torch.ones(c.d_out))
        if self.sparsity == "batchtopk":  # each layer's inference threshold (a running mean, then `finalize`)
            self.register_buffer("threshold", torch.zeros(L))
            self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    @property
    def sparsity(self) -> str:
        return self.cfg.extra.get("clt_sparsity", "topk")

    # The first code overshoots: layer t's prediction sums the codes of t+1 source layers (and, BatchTopK,
    # the batch-wide selection gives large rows many latents); scaling the encoders to the least-squares
    # length keeps every selection (base.fit_initial_scale)
    scales_initial_code = True

    @classmethod
    def folded_shapes(cls, cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
        L = clt_layers(cfg)
        n, d_in, d_out = cfg.d_sae // L, cfg.d_in // L, cfg.d_out // L
        shapes = {"W_enc": (L, d_in, n), "b_enc": (cfg.d_sae,), "b_dec": (cfg.d_out,)}
        return shapes | {f"W_dec_{l}": (n, L - l, d_out) for l in range(L)}

    @classmethod
    def latents_for(cls, per_site: int, hookpoint: str) -> int:
        return per_site * len(hookpoint.split(SEP))

    @classmethod
    def check_training_memory(cls, run, n_sites: int, d_in: int, d_out: int) -> None:
        chunk = run.buffer_batches * (run.lm_batch_tokens or run.batch_tokens)
        check_clt_memory(n_sites, run.latents, d_in, d_out, run.batch_tokens, chunk, run.device)

    def split_sites(self, y: torch.Tensor) -> list[torch.Tensor]:
        """[rows, L*d_out] -> one [rows, d_out] per output site (what crosscoder evaluation reads)."""
        return list(y.view(*y.shape[:-1], self.n_layers, self.d_site_out).unbind(-2))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for l in range(self.n_layers):
                dec = torch.randn(self.n_layers - l, self.n_per_layer, self.d_site_out, generator=generator)
                self.W_dec[l].copy_(dec / dec.pow(2).sum((0, 2), keepdim=True).sqrt())
                enc = torch.randn(self.d_site_in, self.n_per_layer, generator=generator)
                self.W_enc[l].copy_(enc / enc.norm(dim=0, keepdim=True))
            self.b_enc.zero_()
            self.b_dec.zero_()

    def _site(self, t: int, vec: torch.Tensor, d: int) -> torch.Tensor:
        return vec[t * d : (t + 1) * d]

    # ------------------------------------------------------------ init
    @torch.no_grad()
    def init_from_data(self, x, y, bias_init="median"):
        """Per-site scales (E||x_l||^2 = d), b_dec at each output site's geometric median (or mean)."""
        L = self.n_layers
        xs = x.view(-1, L, self.d_site_in)
        ys = y.view(-1, L, self.d_site_out)
        s_in = (self.d_site_in / xs.pow(2).sum(-1).mean(0)).sqrt()  # [L]
        s_out = (self.d_site_out / ys.pow(2).sum(-1).mean(0)).sqrt()
        self.in_scale.copy_(s_in.repeat_interleave(self.d_site_in))
        self.out_scale.copy_(s_out.repeat_interleave(self.d_site_out))
        for t in range(L):
            yt = ys[:, t] * s_out[t]
            self._site(t, self.b_dec, self.d_site_out).copy_(
                geometric_median(yt) if bias_init == "median" else yt.mean(0)
            )
        self.fit_initial_scale(x, y)
        self.reductions.replicate(self.in_scale, self.out_scale, self.b_dec)

    def rescale_code(self, c: float) -> None:
        for w in self.W_enc:
            w.mul_(c)
        self.b_enc.mul_(c)

    # ------------------------------------------------------------ forward (training space)
    def encode_layers(self, x_in: torch.Tensor, dead: torch.Tensor | None = None):
        """-> (per-layer Latents with local ids, per-layer AuxK Latents or None) of scaled inputs [rows, L*d_in]."""
        xs = x_in.view(x_in.shape[0], self.n_layers, self.d_site_in)
        codes, aux = [], []
        for l in range(self.n_layers):
            n = self.n_per_layer
            lat, a = encode_one_layer(self, l, xs[:, l], None if dead is None else dead[l * n : (l + 1) * n])
            codes.append(lat)
            aux.append(a)
        return codes, aux

    def encode(self, x_in):
        codes, _ = self.encode_layers(x_in)
        return merge_layers(codes, self.n_per_layer), x_in.new_zeros(()), None

    def decode(self, lat: Latents) -> torch.Tensor:
        """Global Latents -> [rows, L*d_out] in the training space (b_dec included)."""
        r = self.reductions  # a latent slice decodes its part; b_dec enters once
        part = decode_layers(self, split_layers(lat, self.n_layers, self.n_per_layer))
        return r.latent_sum(part) + r.shared(self.b_dec)

    def predict(self, x_in, lat):
        return self.decode(lat)

    def forward(self, x, dead=None, target=None) -> SaeOutput:
        x_in = self.encoder_input(x)
        r = self.reductions  # a latent slice: counts and decodes span every rank's latents, b_dec enters once
        want_aux = dead is not None and target is not None and bool(r.latent_total(int(dead.sum())))
        codes, aux_codes = self.encode_layers(x_in, dead if want_aux else None)
        recon = r.latent_sum(decode_layers(self, codes)) + r.shared(self.b_dec)
        aux = zero = recon.new_zeros(())
        if want_aux and any(a is not None for a in aux_codes):
            residual = target - recon.detach()
            pred = r.latent_sum(decode_layers(self, aux_codes))
            denom = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            aux = self.cfg.aux_coeff * (pred - residual).pow(2).sum() / denom
        return SaeOutput(recon, merge_layers(codes, self.n_per_layer), zero, aux, zero)

    def auxk_loss(self, x_in, pre, residual, dead):
        raise NotImplementedError("a CLT's AuxK runs per layer inside forward")

    # ------------------------------------------------------------ BatchTopK inference threshold
    @torch.no_grad()
    def finalize(self, x):
        """BatchTopK: each layer's threshold keeps, on these inputs, the k x rows activations batch selection keeps."""
        if self.sparsity != "batchtopk":
            return
        xs = self.encoder_input(x).view(x.shape[0], self.n_layers, self.d_site_in)
        n_keep = self.cfg.k * self.reductions.batch_rows(x.shape[0])
        for l in range(self.n_layers):
            pre = torch.addmm(self._site(l, self.b_enc, self.n_per_layer), xs[:, l], self.W_enc[l]).relu().reshape(-1)
            top = self.reductions.top_values(pre, n_keep + 1).sort(descending=True).values  # over a slice's ranks
            kept = top[:n_keep]
            kept = kept[kept > 0]
            if kept.numel():
                below = top[n_keep].item() if top.numel() > n_keep else 0.0
                self.threshold[l] = (kept.min().item() + below) / 2

    def fit_initial_scale(self, x, y):
        c = super().fit_initial_scale(x, y)
        if self.sparsity == "batchtopk":  # the fit's encode entered unscaled values into the running thresholds
            self.threshold.zero_()
            self.threshold_steps.zero_()
        return c

    # ------------------------------------------------------------ decoder norm
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        for w in self.W_dec:
            w /= w.pow(2).sum((0, 2), keepdim=True).sqrt().clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        for w in self.W_dec:
            if w.grad is not None:
                g = w.grad
                g -= (g * w).sum((0, 2), keepdim=True) * w

    # ------------------------------------------------------------ raw-space API
    def encode_layer(self, l: int, x_raw: torch.Tensor) -> Latents:
        """Layer l's latents (local ids 0..n-1) of raw MLP inputs [rows, d_site_in], as trained."""
        x_in = x_raw.reshape(-1, self.d_site_in) * self._site(l, self.in_scale, self.d_site_in)
        return encode_one_layer(self, l, x_in, None)[0]

    def decode_layer(self, src: int, lat: Latents, tgt: int) -> torch.Tensor:
        """[rows, d_site_out] raw-space contribution of layer `src`'s latents to layer `tgt`'s MLP output
        (no bias; zero when tgt < src)."""
        if tgt < src:
            return lat.values.new_zeros(lat.n_rows, self.d_site_out)
        w = self.W_dec[src][tgt - src]
        out = decode_layers(self, [lat], weights=[w], width=self.d_site_out)
        return out / self._site(tgt, self.out_scale, self.d_site_out)

    def output_bias(self, tgt: int) -> torch.Tensor:
        """[d_site_out] layer `tgt`'s output bias in raw space."""
        return self._site(tgt, self.b_dec, self.d_site_out) / self._site(tgt, self.out_scale, self.d_site_out)

    def _raw_decoder(self, l: int) -> torch.Tensor:
        """[L-l, n, d_site_out] layer l's decoders in raw space."""
        s = self.out_scale.view(self.n_layers, 1, self.d_site_out)[l:]
        return self.W_dec[l] / s

    @torch.no_grad()
    def decoder_norms(self) -> torch.Tensor:
        """[L*n, L] the raw-space norm of each latent's decoder into each target layer (0 before its own)."""
        out = self.b_enc.new_zeros(self.cfg.d_sae, self.n_layers)
        for l in range(self.n_layers):
            out[l * self.n_per_layer : (l + 1) * self.n_per_layer, l:] = self._raw_decoder(l).norm(dim=-1).t()
        return out

    @torch.no_grad()
    def decoder_vectors(self, g: torch.Tensor, tgt: int) -> torch.Tensor:
        """[len(g), d_site_out] raw-space decoder vectors of global latents g into layer `tgt` (0 if g's layer > tgt)."""
        g = torch.as_tensor(g, dtype=torch.long, device=self.b_enc.device).reshape(-1)
        out = self.b_dec.new_zeros(len(g), self.d_site_out)
        layer, j = g // self.n_per_layer, g % self.n_per_layer
        s = self._site(tgt, self.out_scale, self.d_site_out)
        for l in layer.unique().tolist():
            if l <= tgt:
                m = layer == l
                out[m] = self.W_dec[l][tgt - l, j[m]] / s
        return out

    # ------------------------------------------------------------ folding for save
    def folded_state(self) -> dict[str, torch.Tensor]:
        s_in = self.in_scale.view(self.n_layers, self.d_site_in, 1)
        out = {
            "W_enc": torch.stack([w.detach() for w in self.W_enc]) * s_in,
            "b_enc": self.b_enc.detach().clone(),
            "b_dec": self.b_dec.detach() / self.out_scale,
        }
        out |= {f"W_dec_{l}": self._raw_decoder(l).detach().transpose(0, 1).contiguous() for l in range(self.n_layers)}
        return out | self.extra_state_tensors()

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        if self.sparsity != "batchtopk":
            return {}
        return {"threshold": self.threshold.repeat_interleave(self.n_per_layer).clone()}

    def load_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for l in range(self.n_layers):
                self.W_enc[l].copy_(tensors["W_enc"][l])
                self.W_dec[l].copy_(tensors[f"W_dec_{l}"].transpose(0, 1))
            self.b_enc.copy_(tensors["b_enc"])
            self.b_dec.copy_(tensors["b_dec"])
            self.in_scale.fill_(1.0)
            self.out_scale.fill_(1.0)
            if self.sparsity == "batchtopk":
                self.threshold.copy_(tensors["threshold"].view(self.n_layers, self.n_per_layer)[:, 0])
