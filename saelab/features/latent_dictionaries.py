"""What a latent cache records: each dictionary as one `Dictionary`, an `encode` from raw activations to
the (row, latent, value) of its active entries. An SAE folder gives one (`sae_dictionary`), the units of one
hookpoint another (`neuron_dictionary`, `--neurons`). Kept apart from the writer (latent_cache_writer.py),
which only runs them over the corpus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .clt_features import clt_info, is_clt, own_decoders
from .latent_cache import dict_dirname


@dataclass
class Dictionary:
    """One thing to cache: encode(acts [B*T, d]) -> (flat row index, latent, value) of active entries."""

    name: str
    kind: str  # sae | neurons
    source: str
    hookpoint: str
    d_sae: int
    steer_hookpoint: str | None
    decoder: torch.Tensor | None  # [d_sae, d_model]
    encode: Callable  # one raw activation [N, d] per site of `sites`
    extra: dict = field(default_factory=dict)
    decoder_norms: torch.Tensor | None = None  # a CLT: [d_sae, L] each latent's decoder norm per target layer

    @property
    def sites(self) -> list[str]:
        """The sites `encode` reads, in order: one, or a CLT's L MLP inputs (its hookpoint joined by '+')."""
        return self.hookpoint.split("+")

    def info(self, shard_size: int) -> dict:
        return {
            "kind": self.kind,
            "source": self.source,
            "hookpoint": self.hookpoint,
            "d_sae": self.d_sae,
            "steer_hookpoint": self.steer_hookpoint,
            "shard_size": shard_size,
            "n_shards": (self.d_sae + shard_size - 1) // shard_size,
            "dir": dict_dirname(self.name),
            **self.extra,
        }


def refuse_crosscoder(folder, sae) -> None:
    if not type(sae).capabilities.latent_cache:  # a crosscoder: no one site to record examples at or steer
        raise UserError(
            f"{folder}: a --arch {sae.cfg.arch} dictionary has no one site (a crosscoder reads several at "
            f"once); the latent cache (and so explain, dashboards and steering) records one site per "
            f"dictionary and does not support it"
        )


def sae_dictionary(folder: Path, name: str, sae) -> Dictionary:
    if is_clt(sae):
        return clt_dictionary(folder, name, sae)

    def encode(x):  # x [N, d_in] raw -> flat (row, latent, value) with value > 0
        rows, idx, vals = sae.encode_raw(x).flat()
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep]

    steer = sae.cfg.out_hookpoint or sae.cfg.hookpoint
    return Dictionary(
        name, "sae", str(folder), sae.cfg.hookpoint, sae.cfg.d_sae, steer, sae.W_dec.detach().clone(), encode
    )


def clt_dictionary(folder: Path, name: str, clt) -> Dictionary:
    """A cross-layer transcoder as ONE dictionary of L*n latents, global id g = l*n + j: layer l's latents
    encoded from layer l's MLP input (every input site collected in the same forward). Its recorded
    `decoder` is each latent's decoder into its own layer's MLP output (features/clt_features.py says why),
    `decoder_norms` [L*n, L] its decoder norm into every layer; steering sites are the MLP outputs."""
    n = clt.n_per_layer

    def encode(*xs):  # one raw [N, d_site_in] per layer -> flat (row, global latent, value), value > 0
        parts = []
        for l, x in enumerate(xs):
            rows, idx, vals = clt.encode_layer(l, x).flat()
            keep = vals > 0
            parts.append((rows[keep], idx[keep] + l * n, vals[keep]))
        return tuple(torch.cat(p) for p in zip(*parts))

    return Dictionary(
        name,
        "sae",
        str(folder),
        clt.cfg.hookpoint,
        clt.cfg.d_sae,
        clt.cfg.out_hookpoint,
        own_decoders(clt),
        encode,
        {"clt": clt_info(clt)},
        clt.decoder_norms().float(),
    )


def neuron_dictionary(model, hookpoint: str, k: int) -> Dictionary:
    """The units at `hookpoint` as a dictionary: top-k per token (k=0: every positive value).

    For `X:input` with X a Linear or Conv1D (e.g. `mlp.down_proj:input`), neuron j's output direction is
    column j of X.weight, added at X's output: that is the 'decoder' used for hard negatives and
    for the intervention scorer."""
    from ..models import hookpoint_widths, input_unit_directions

    d = hookpoint_widths(model, [hookpoint])[hookpoint]
    if k < 0 or k > d:
        raise UserError(f"--neuron-k must be between 0 and the width of {hookpoint} ({d})")
    decoder, steer = None, None
    if hookpoint.endswith(":input"):
        decoder = input_unit_directions(model.get_submodule(hookpoint.removesuffix(":input")), d)  # [d_mlp, d_model]
        if decoder is not None:
            steer = hookpoint.removesuffix(":input")

    def encode(x):  # x [N, d]
        if k:
            vals, idx = x.topk(k, dim=-1)
            rows = torch.arange(x.shape[0]).repeat_interleave(k)
            vals, idx = vals.reshape(-1), idx.reshape(-1)
        else:
            rows, idx = (x > 0).nonzero(as_tuple=True)
            vals = x[rows, idx]
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep]

    return Dictionary(
        f"neurons:{hookpoint}", "neurons", f"neurons:{hookpoint}", hookpoint, d, steer, decoder, encode, {"neuron_k": k}
    )
