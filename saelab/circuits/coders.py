"""A replacement's dictionaries as an attribution graph reads them, in raw activation space and by MODEL layer.

A per-layer transcoder set (PLT) and a cross-layer transcoder (CLT) answer the same questions here: which
features fire at a layer's MLP input (with their activations and pre-activations minus the encoder bias,
the part of a feature's input the graph explains), each active feature's encoder vector, where its decoders
write (a PLT feature into its own layer's MLP output, a CLT feature into every layer from its own on), each
layer's output bias and the linear skip of a skip transcoder. Nothing else in circuits/ looks inside a
dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..sae.replacement import Replacement

# Types whose activation is a function of one linear pre-activation that equals it wherever the feature is
# active (TopK, BatchTopK, JumpReLU, ReLU; Matryoshka is TopK-based): the graph's linear story holds for them.
ATTRIBUTABLE = ("topk", "batchtopk", "jumprelu", "relu", "matryoshka", "clt")


@dataclass
class LayerFeatures:
    """The active features of one model layer on one prompt."""

    positions: torch.Tensor  # [m] long
    ids: torch.Tensor  # [m] long, feature id within this layer's dictionary
    values: torch.Tensor  # [m] activation


class ReplacementCoders:
    """Raw-space encode / encoder vectors / decoder writes of a replacement, indexed by model layer."""

    def __init__(self, rep: Replacement):
        self.rep = rep
        self.kind = rep.kind
        self.model_layers = rep.model_layers
        self.layers = list(rep.layers)  # model layers that have a dictionary
        self._index = {layer: i for i, layer in enumerate(self.layers)}
        for f in rep.folders:
            if f.sae.cfg.arch not in ATTRIBUTABLE:
                raise UserError(
                    f"{f.path}: a {f.sae.cfg.arch} dictionary has no single linear pre-activation per feature, so "
                    f"an attribution graph cannot explain its features (attributable: {', '.join(ATTRIBUTABLE)})"
                )
        self._clt = rep.dictionaries[0] if rep.kind == "clt" else None

    # ------------------------------------------------------------ shape
    def has(self, layer: int) -> bool:
        return layer in self._index

    def n_features(self, layer: int) -> int:
        """Features of model layer `layer`'s dictionary (0 for a layer the replacement does not cover)."""
        if not self.has(layer):
            return 0
        return self._clt.n_per_layer if self._clt is not None else self._sae(layer).cfg.d_sae

    def write_layers(self, layer: int) -> list[int]:
        """The model layers a feature of `layer` writes into (its own; a CLT's: its own and every later one)."""
        if self._clt is None:
            return [layer]
        return self.layers[self._index[layer] :]

    def _sae(self, layer: int):
        return self.rep.dictionaries[self._index[layer]]

    # ------------------------------------------------------------ encode
    @torch.no_grad()
    def encode(self, layer: int, x: torch.Tensor, first_position: int = 0) -> LayerFeatures:
        """Active features of raw MLP inputs x [P, d_in] at positions >= first_position (earlier positions,
        the attention sink, have no feature nodes)."""
        x = x.float()
        if self._clt is not None:
            lat = self._clt.encode_layer(self._index[layer], x)
        else:
            lat = self._sae(layer).encode_raw(x)
        rows, ids, vals = lat.flat()
        keep = (vals != 0) & (rows >= first_position)
        rows, ids, vals = rows[keep], ids[keep], vals[keep]
        order = torch.argsort(rows * self.n_features(layer) + ids)  # position-major, then id
        return LayerFeatures(rows[order], ids[order], vals[order].float())

    @torch.no_grad()
    def encoder_vectors(self, layer: int, ids: torch.Tensor) -> torch.Tensor:
        """[m, d_in] raw-space encoder vectors: a feature's pre-activation is x . vector + its encoder bias."""
        if self._clt is not None:
            clt, i = self._clt, self._index[layer]
            scale = clt._site(i, clt.in_scale, clt.d_site_in)
            return (clt.W_enc[i][:, ids] * scale[:, None]).t().float()
        sae = self._sae(layer)
        return (sae.W_enc[:, ids] * sae.in_scale).t().float()

    # ------------------------------------------------------------ decode
    @torch.no_grad()
    def write_vectors(self, layer: int, ids: torch.Tensor, target: int) -> torch.Tensor:
        """[m, d_out] raw-space decoder vectors of features `ids` of `layer` into model layer `target`'s MLP
        output (per unit of activation)."""
        if self._clt is not None:
            clt = self._clt
            g = ids + self._index[layer] * clt.n_per_layer
            return clt.decoder_vectors(g, self._index[target]).float()
        if target != layer:
            return torch.zeros(len(ids), self._sae(layer).cfg.d_out, device=ids.device)
        sae = self._sae(layer)
        return (sae.W_dec[ids] / sae.out_scale).float()

    @torch.no_grad()
    def output_bias(self, layer: int) -> torch.Tensor | float:
        """[d_out] the constant every position's MLP output gets from the dictionary (0 without one)."""
        if not self.has(layer):
            return 0.0
        if self._clt is not None:
            return self._clt.output_bias(self._index[layer]).float()
        sae = self._sae(layer)
        return (sae.b_dec / sae.out_scale).float()

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | float:
        """The skip transcoder's linear term of raw MLP inputs x (differentiable; 0 without a skip)."""
        if self._clt is not None or not self.has(layer):
            return 0.0
        sae = self._sae(layer)
        return sae.skip_raw(x) if sae.cfg.skip else 0.0

    @torch.no_grad()
    def reconstruction(self, layer: int, feats: dict[int, LayerFeatures], n_pos: int) -> torch.Tensor | float:
        """[n_pos, d_out] what the features in `feats` (by their model layer) write into `layer`'s MLP output,
        plus the output bias (the skip term is not included)."""
        if not self.has(layer):
            return 0.0
        out = None
        for src in self.layers:
            if src > layer or src not in feats or layer not in self.write_layers(src):
                continue
            f = feats[src]
            w = self.write_vectors(src, f.ids, layer) * f.values[:, None]
            part = torch.zeros(n_pos, w.shape[1], device=w.device).index_add_(0, f.positions, w)
            out = part if out is None else out + part
        bias = self.output_bias(layer)
        return bias if out is None else out + bias
