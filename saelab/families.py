"""Model families: what each causal-LM family looks like, answered in one place.

A `Family` is the one adapter every stage asks about a model's shape: where its blocks are, the
hook kinds of a block in forward order (and so the MLP input / output / neuron sites of layer l),
the final norm as a function on directions (Gemma's RMSNorm multiplies by 1 + weight), the
unembedding, and the TransformerLens names SAELens releases use for its sites. Nothing outside
this file spells a family's module names. Adding a family is one `Family(...)` in `FAMILIES`;
a model of no listed `model_type` is read by structure (`_generic`), as any HF causal LM is.

Kinds: what is added to the residual stream is `attn_out` / `mlp_out`, what the MLP reads is `mlp_in`
(the normalised input), its hidden activation `mlp_neurons`, the block's output `resid_post`. Blocks
with a norm after attention and after the MLP (Gemma 2/3 "sandwich" norms) add the post-norm outputs:
there the raw outputs are `attn_out_prenorm` / `mlp_out_prenorm`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError

KIND_ORDER = ["attn_out_prenorm", "attn_out", "mlp_in", "mlp_neurons", "mlp_out_prenorm", "mlp_out", "resid_post"]

# block sub-module ("" = the block itself, `:input` = a module's first input) -> kind, in forward order
_LLAMA = {
    "self_attn": "attn_out",
    "post_attention_layernorm": "mlp_in",
    "mlp.down_proj:input": "mlp_neurons",
    "mlp": "mlp_out",
    "": "resid_post",
}
_SANDWICH = {
    "self_attn": "attn_out_prenorm",
    "post_attention_layernorm": "attn_out",
    "pre_feedforward_layernorm": "mlp_in",
    "mlp.down_proj:input": "mlp_neurons",
    "mlp": "mlp_out_prenorm",
    "post_feedforward_layernorm": "mlp_out",
    "": "resid_post",
}
_GPT2 = {"attn": "attn_out", "ln_2": "mlp_in", "mlp.c_proj:input": "mlp_neurons", "mlp": "mlp_out", "": "resid_post"}
_NEOX = {
    "attention": "attn_out",
    "post_attention_layernorm": "mlp_in",
    "mlp.dense_4h_to_h:input": "mlp_neurons",
    "mlp": "mlp_out",
    "": "resid_post",
}

# TransformerLens hook of a block -> how the family's kinds name it (resid_mid = what the MLP's norm reads;
# TL's hook_mlp_in is the same tensor; mlp.hook_post = the MLP's hidden activation)
_TL_HOOK = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out|"
    r"hook_mlp_in|mlp\.hook_post)$"
)
_TL_KIND = {
    "hook_resid_post": "resid_post",
    "hook_mlp_out": "mlp_out",
    "hook_attn_out": "attn_out",
    "mlp.hook_post": "mlp_neurons",
    "hook_resid_mid": "mlp_in:input",
    "hook_mlp_in": "mlp_in:input",
}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF config.model_type values of this family
    blocks: str  # the ModuleList of transformer blocks ("model.layers")
    kinds: dict[str, str]  # block sub-module -> kind, in forward order (see _LLAMA)
    final_norm: str  # the norm the unembedding reads ("model.norm"); "" if none was found
    norm: str = "rms"  # "rms": x * scale / rms(x);  "layer": (x - mean) * scale / std(x) + bias
    norm_offset: float = 0.0  # the RMSNorm's scale is offset + weight: 1.0 for Gemma
    tl_names: str = ""  # regex found in the TransformerLens / SAELens model names of this family

    # ------------------------------------------------------------ sites
    def block(self, layer: int) -> str:
        return f"{self.blocks}.{layer}"

    def site(self, layer: int, kind: str, blocks: str | None = None) -> str:
        """The hookpoint of `kind` in block `layer` (`blocks`: another path to the blocks)."""
        sub = next((s for s, k in self.kinds.items() if k == kind), None)
        if sub is None:
            raise UserError(f"{self.name} models have no {kind} site (their kinds: {', '.join(self.kinds.values())})")
        return f"{blocks or self.blocks}.{layer}.{sub}".replace(".:", ":").rstrip(".")

    def mlp_in_site(self, layer: int) -> str:
        """What the MLP of block `layer` reads (the output of its norm)."""
        return self.site(layer, "mlp_in")

    def mlp_out_site(self, layer: int) -> str:
        """What the MLP of block `layer` adds to the residual stream (after the post-norm in a sandwich block)."""
        return self.site(layer, "mlp_out")

    def neuron_site(self, layer: int) -> str:
        """The MLP's hidden units: the input of its output projection."""
        return self.site(layer, "mlp_neurons")

    def hookpoints(self, model: nn.Module) -> list[tuple[str, str]]:
        """(name, kind) of the usual hook sites present in `model`, block by block in forward order."""
        layers = model.get_submodule(self.blocks)
        out = []
        for i, layer in enumerate(layers):
            names = {n for n, _ in layer.named_modules()}
            found = [
                (f"{self.blocks}.{i}.{sub}".replace(".:", ":").rstrip("."), kind)
                for sub, kind in self.kinds.items()
                if sub.removesuffix(":input") in names
            ]
            out += sorted(found, key=lambda nk: KIND_ORDER.index(nk[1]))
        return out

    # ------------------------------------------------------------ logit lens
    def final_norm_fn(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The final norm acting on directions [..., d], its denominator held at 1: what adding a direction
        to the last residual stream does to the unembedding's input, up to that one positive factor.
        RMSNorm: x * (offset + weight); LayerNorm: (x - mean(x)) * weight (its bias moves no direction)."""
        mod = model.get_submodule(self.final_norm) if self.final_norm else None
        w = getattr(mod, "weight", None)
        scale = (w.detach().float() + self.norm_offset) if w is not None else None
        centre = self.norm == "layer"

        def apply(x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            if centre:
                x = x - x.mean(-1, keepdim=True)
            return x * scale if scale is not None else x

        return apply

    def unembedding(self, model: nn.Module) -> torch.Tensor | None:
        """[vocab, d]: the output embedding's weight (None if the model has no LM head)."""
        emb = model.get_output_embeddings()
        return emb.weight.detach().float() if emb is not None else None

    # ------------------------------------------------------------ frozen norms (attribution graphs)
    def is_norm(self, module: nn.Module) -> bool:
        """Whether `module` is one of the model's normalisations (pre / post / final norms, q / k norms)."""
        name = type(module).__name__
        return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")

    def norm_denominator(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """[..., 1] what the norm `module` divides x [..., d] by: sqrt(mean(x^2) + eps) for an RMSNorm,
        sqrt(var(x) + eps) for a LayerNorm."""
        eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
        x = x.float()
        if self._centres(module):
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def norm_with(self, module: nn.Module, x: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        """The norm's output with its denominator given (held at a recorded value): linear in x, which is how
        an attribution graph freezes normalisation (Ameisen et al. 2025)."""
        centre = self._centres(module)
        if centre:
            x = x - x.mean(-1, keepdim=True)
        y = x / denominator
        w = getattr(module, "weight", None)
        if w is not None:
            y = y * (w + (0.0 if centre else self.norm_offset))
        b = getattr(module, "bias", None)
        return y + b if b is not None else y

    def _centres(self, module: nn.Module) -> bool:
        name = type(module).__name__
        return isinstance(module, nn.LayerNorm) or (name.endswith("LayerNorm") and self.norm == "layer")

    # ------------------------------------------------------------ TransformerLens names
    def tl_site(self, hook: str, base: str | None = None) -> str | None:
        """TransformerLens hook name (blocks.6.hook_resid_post) -> this family's hookpoint; None if `hook` is not
        one. `base`: the path of the base model with its dot ("model.") when it is not the family's own."""
        m = _TL_HOOK.match(hook or "")
        if not m:
            return None
        layer, name = int(m.group(1)), m.group(2)
        blocks = base + self.blocks.rsplit(".", 1)[-1] if base else self.blocks
        if name == "hook_resid_pre":
            return f"{blocks}.{layer}:input"
        kind = _TL_KIND[name]
        return self.site(layer, kind.removesuffix(":input"), blocks) + (":input" if kind.endswith(":input") else "")


LLAMA = Family("llama", ("llama", "qwen2", "qwen3", "mistral"), "model.layers", _LLAMA, "model.norm")
GEMMA = Family("gemma", ("gemma",), "model.layers", _LLAMA, "model.norm", norm_offset=1.0, tl_names=r"gemma")
GEMMA2 = Family(
    "gemma2",
    ("gemma2", "gemma3", "gemma3_text"),
    "model.layers",
    _SANDWICH,
    "model.norm",
    norm_offset=1.0,
    tl_names=r"gemma-?[23](?![0-9a-z.])",
)  # not gemma-2b
GPT2 = Family("gpt2", ("gpt2",), "transformer.h", _GPT2, "transformer.ln_f", norm="layer", tl_names=r"gpt2")
NEOX = Family(
    "gpt_neox",
    ("gpt_neox",),
    "gpt_neox.layers",
    _NEOX,
    "gpt_neox.final_layer_norm",
    norm="layer",
    tl_names=r"pythia|neox",
)
FAMILIES = [GEMMA2, GEMMA, GPT2, NEOX, LLAMA]  # specific names first: "gemma-2" before "gemma"
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_named(name: str) -> Family:
    """The family called `name` ("llama", "gemma2", ...): what a replacement manifest records."""
    fam = next((f for f in FAMILIES if f.name == name), None)
    if fam is None:
        raise UserError(f"unknown model family {name!r} (known: {', '.join(f.name for f in FAMILIES)})")
    return fam


def family_for_name(model_name: str | None) -> Family:
    """The family of a TransformerLens / SAELens model name ("gpt2-small", "pythia-70m-deduped",
    "gemma-2-2b"); Llama's for any other name (Llama, Qwen, Mistral share its module names)."""
    low = (model_name or "").lower()
    return next((f for f in FAMILIES if f.tl_names and re.search(f.tl_names, low)), LLAMA)


def family_of(model: nn.Module) -> Family:
    """The adapter of a loaded (or meta-device) model: by its config's model_type when listed and shaped as
    listed, else read from its structure."""
    fam = _BY_TYPE.get(getattr(getattr(model, "config", None), "model_type", None))
    if fam is not None:
        try:
            if isinstance(model.get_submodule(fam.blocks), nn.ModuleList):
                return fam
        except AttributeError:
            pass
    return _generic(model)


# ---------------------------------------------------------------- any other causal LM, by structure
_ANY_KINDS = {**_GPT2, **_NEOX, **_LLAMA, "feed_forward": "mlp_out"}
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm")


def _generic(model: nn.Module) -> Family:
    """A family read from the model itself: the ModuleList as long as config.num_hidden_layers, the kind
    names any listed family uses (sandwich kinds when a block has both feed-forward norms), the first final
    norm found at a usual path."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    found = next(
        (
            (name, mod)
            for name, mod in model.named_modules()
            if isinstance(mod, nn.ModuleList) and (n is None or len(mod) == n)
        ),
        None,
    )
    if found is None:
        raise UserError(
            f"{type(model).__name__}: could not find the model's list of transformer blocks (a "
            f"ModuleList of config.num_hidden_layers blocks); this architecture is not supported"
        )
    blocks, layers = found
    names = {s for layer in layers for s, _ in layer.named_modules()}
    table = _SANDWICH if {"pre_feedforward_layernorm", "post_feedforward_layernorm"} <= names else _ANY_KINDS
    kinds = {s: k for s, k in table.items() if s.removesuffix(":input") in names}
    norm_path = ""
    for path in _FINAL_NORMS:
        try:
            norm_mod = model.get_submodule(path)
        except AttributeError:
            continue
        norm_path = path
        break
    centred = norm_path and (isinstance(norm_mod, nn.LayerNorm) or type(norm_mod).__name__.endswith("LayerNorm"))
    norm = "layer" if centred else "rms"  # Cohere's, OLMo's LayerNorm classes centre too; RMSNorms do not
    return Family("generic", (), blocks, kinds, norm_path, norm=norm)
