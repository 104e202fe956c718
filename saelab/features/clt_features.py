"""A cross-layer transcoder's latents as features (sae/clt.py): one feature per CLT latent, global id
g = l * n + j, encoded at layer l's MLP input and written by its decoders into the MLP output of every
layer t >= l.

What each consumer of a feature reads, in one place:
- the latent cache's `decoder` (nearest features, hard negatives, the intervention scorer):
  `own_decoders` [L*n, d_out], each latent's decoder into its OWN layer's MLP output (where it is read,
  the first place it writes); `decoder_norms` [L*n, L] beside it says how strongly it writes to each layer.
- logit effects on a feature page: `summed_decoders`, the sum of its decoders over every target layer,
  read through the final norm and the unembedding. Approximation (the direct path): every MLP output is
  added to the residual stream, so this is what the latent adds to the final residual if nothing between
  its writes and the unembedding reacted to it (attention and the later MLPs are ignored, as the logit
  lens of an SAE ignores them).
- steering (`CltLayerEdit`): an edit at the encoder layer, decoded into every later layer by the causal
  splice (sae/splice.py `clt_spliced`), with each layer's reconstruction error kept.
"""

from __future__ import annotations

import torch

from ..sae.clt import CrossLayerTranscoder
from ..sae.crosscoder import SEP


def is_clt(sae) -> bool:
    return isinstance(sae, CrossLayerTranscoder)


def clt_sites(sae) -> tuple[list[str], list[str]]:
    """(each layer's MLP input site, each layer's MLP output site), layer order."""
    return sae.cfg.hookpoint.split(SEP), sae.cfg.out_hookpoint.split(SEP)


@torch.no_grad()
def own_decoders(clt) -> torch.Tensor:
    """[L*n, d_site_out] raw space: latent g's decoder into its own layer (g // n)'s MLP output."""
    n = clt.n_per_layer
    return torch.cat([clt.decoder_vectors(torch.arange(l * n, (l + 1) * n), l) for l in range(clt.n_layers)]).float()


@torch.no_grad()
def summed_decoders(clt) -> torch.Tensor:
    """[L*n, d_site_out] raw space: the sum of latent g's decoders over every target layer (the direct-path
    write to the residual stream; see the module docstring)."""
    n = clt.n_per_layer
    out = []
    for l in range(clt.n_layers):
        g = torch.arange(l * n, (l + 1) * n)
        out.append(sum(clt.decoder_vectors(g, t) for t in range(l, clt.n_layers)))
    return torch.cat(out).float()


def clt_info(sae) -> dict:
    """What the cache manifest records of a CLT dictionary (`info["clt"]`): enough to place a latent."""
    ins, outs = clt_sites(sae)
    return {"n_layers": sae.n_layers, "n_per_layer": sae.n_per_layer, "input_sites": ins, "output_sites": outs}


def writes(norms: torch.Tensor, g: int, n_per_layer: int, model_layers: list[int] | None = None) -> dict:
    """A feature page's "writes to" block of latent g from its row of the decoder norms [L*n, L]:
    {layer, local, encoder layer (model numbering), targets [{layer, norm, rel}] from its layer on,
    strongest}. `model_layers[t]`: the model's layer number of CLT layer t (default t)."""
    row = norms[g].float()
    src = g // n_per_layer
    names = model_layers or list(range(len(row)))
    top = float(row.max()) if len(row) else 0.0
    targets = [
        {"layer": names[t], "norm": float(row[t]), "rel": float(row[t]) / top if top > 0 else 0.0}
        for t in range(src, len(row))
    ]
    strongest = names[int(row.argmax())] if top > 0 else None
    return {"layer": names[src], "local": g % n_per_layer, "targets": targets, "strongest": strongest}


class CltLayerEdit:
    """A dense-latent edit (features/steer.py `FeatureSteer`: [.., d_sae] -> edited) applied to a CLT one
    layer at a time, as the causal splice encodes them: `(layer, dense [.., n]) -> edited [.., n]` edits the
    global latents of that layer. The steer's position counter advances once per forward (at layer 0, the
    first to run), so every layer edits the same positions."""

    def __init__(self, steer, n_per_layer: int):
        self.steer, self.n = steer, n_per_layer
        self._mask: torch.Tensor | None = None

    def __call__(self, layer: int, dense: torch.Tensor) -> torch.Tensor:
        if layer == 0 or self._mask is None:
            self._mask = self.steer.mask(dense.shape[-2], dense.device)
        for latent, op, v in self.steer.edits:
            if latent // self.n != layer:
                continue
            j = latent % self.n
            col = dense[..., j]
            new = torch.full_like(col, v) if op == "clamp" else col + v
            dense[..., j] = torch.where(self._mask, new, col)
        return dense
