"""The clean recording of a prompt, and the frozen forward an attribution graph differentiates.

`record` runs the real model once on the prompt and keeps what the graph needs: the residual stream entering
the first block (the token nodes' vectors), each layer's MLP input and output, the final norm's output, the
logits, every norm's denominator and every attention pattern.

`frozen_forward` runs the same model again on the first `n` tokens with the local replacement model's
freezes (Ameisen et al. 2025): every norm divides by its recorded denominator, every attention head uses its
recorded pattern (so only its value / output path carries gradient), and every MLP's output is a given
tensor (a leaf: what the dictionary and its error node write) plus the linear skip of a skip transcoder. The
model is then affine in the leaves, so a backward pass from a node's input reads its direct effects. The
model's own modules compute everything else (projections, positional terms, biases): no second copy of the
model code. Causality makes a prefix's recording the recording's prefix, so a node at position p is
differentiated in a forward over p + 1 tokens only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..families import Family, family_of
from ..models import first_tensor, module_at
from .coders import ReplacementCoders

ATTENTION = "saelab_frozen"  # our attention implementation's name in transformers' registry


@dataclass
class Recording:
    """The clean run of one prompt (batch of 1; tensors [P, d] unless said)."""

    tokens: torch.Tensor  # [P] long
    resid0: torch.Tensor  # the residual stream entering block 0 (embeddings, + positions where the model adds them)
    mlp_in: dict[int, torch.Tensor]  # model layer -> its MLP's (normalised) input
    mlp_out: dict[int, torch.Tensor]  # model layer -> what its MLP adds to the residual stream
    final: torch.Tensor  # the final norm's output (what the unembedding reads)
    logits: torch.Tensor  # [P, vocab]
    denominators: dict[str, torch.Tensor] = field(default_factory=dict)  # norm module -> [1, P, 1]
    patterns: dict[str, torch.Tensor] = field(default_factory=dict)  # attention module -> [1, heads, P, P]

    @property
    def n_pos(self) -> int:
        return len(self.tokens)


@dataclass
class FrozenRun:
    """One frozen forward: its leaves (inputs of the graph's sources) and the tensors targets read."""

    resid0: torch.Tensor  # [1, n, d] leaf
    mlp_out: dict[int, torch.Tensor]  # model layer -> [1, n, d] leaf
    mlp_in: dict[int, torch.Tensor]  # model layer -> [1, n, d], a function of the leaves
    final: torch.Tensor  # [1, n, d]


class _Freezer:
    """The hooks of a recording (mode "record") or of a frozen forward (mode "frozen") on one model."""

    active: _Freezer | None = None  # the freezer whose forward is running (our attention function asks it)

    def __init__(self, model: nn.Module, family: Family, mode: str, rec: Recording | None = None):
        self.model, self.family, self.mode, self.rec = model, family, mode, rec
        self.denominators: dict[str, torch.Tensor] = {}
        self.patterns: dict[str, torch.Tensor] = {}
        self.names = {m: n for n, m in model.named_modules()}

    # ---------------------------------------------------------------- norms
    def norm_hook(self, name: str, module: nn.Module):
        def hook(mod, args, out):
            x = args[0]
            if "forward" in mod.__dict__:  # a sandwich block's MLP post-norm, replaced with the MLP (_mlp_replaced)
                return out
            if self.mode == "record":
                self.denominators[name] = self.family.norm_denominator(mod, x.detach())
                return out
            den = self.rec.denominators[name][:, : x.shape[1]]
            return self.family.norm_with(mod, x, den).to(first_tensor(out).dtype)

        return hook

    # ---------------------------------------------------------------- attention
    def attend(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        name = self.names[module]
        if self.mode == "record":
            eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if eager is None:
                raise UserError(f"{type(module).__name__}: no eager attention in its transformers module to record")
            out, weights = eager(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs)
            self.patterns[name] = weights.detach()
            return out, weights
        n = query.shape[2]
        weights = self.rec.patterns[name][:, :, :n, :n]
        value = value.repeat_interleave(weights.shape[1] // value.shape[1], dim=1)  # grouped-query heads
        out = torch.matmul(weights.to(value.dtype), value).transpose(1, 2).contiguous()
        return out, weights


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    freezer = _Freezer.active
    if freezer is None:
        raise RuntimeError("saelab's frozen attention ran outside a recording or frozen forward")
    return freezer.attend(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


@contextmanager
def _frozen_model(model: nn.Module, freezer: _Freezer) -> Iterator[None]:
    """Our attention implementation and the norm hooks in place for the block's forwards."""
    _register_attention()
    before = model.config._attn_implementation
    handles = [
        m.register_forward_hook(freezer.norm_hook(n, m)) for n, m in model.named_modules() if freezer.family.is_norm(m)
    ]
    model.set_attn_implementation(ATTENTION)
    _Freezer.active = freezer
    try:
        yield
    finally:
        _Freezer.active = None
        model.set_attn_implementation(before)
        for h in handles:
            h.remove()


def _capture(stack: ExitStack, module: nn.Module, store: dict, key) -> None:
    h = module.register_forward_hook(lambda m, a, out: store.__setitem__(key, first_tensor(out)))
    stack.callback(h.remove)


def _block0_input(stack: ExitStack, model: nn.Module, family: Family, store: dict, replace=None) -> None:
    """Capture (and with `replace`, substitute) the hidden states entering block 0."""

    def pre(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        store["resid0"] = hidden
        if replace is None:
            return None
        if args:
            return (replace,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replace}

    h = model.get_submodule(family.block(0)).register_forward_pre_hook(pre, with_kwargs=True)
    stack.callback(h.remove)


def _sites(family: Family, layer: int) -> tuple[str, str]:
    return family.mlp_in_site(layer), family.mlp_out_site(layer)


@torch.no_grad()
def record(model: nn.Module, tokens: torch.Tensor) -> Recording:
    """The clean forward of `tokens` [P] (one prompt) with what the graph needs kept."""
    family = family_of(model)
    freezer = _Freezer(model, family, "record")
    store: dict = {}
    n_layers = len(model.get_submodule(family.blocks))
    with ExitStack() as stack:
        stack.enter_context(_frozen_model(model, freezer))
        _block0_input(stack, model, family, store)
        for layer in range(n_layers):
            a, b = _sites(family, layer)
            _capture(stack, module_at(model, a), store, ("in", layer))
            _capture(stack, module_at(model, b), store, ("out", layer))
        if family.final_norm:
            _capture(stack, model.get_submodule(family.final_norm), store, "final")
        logits = model(input_ids=tokens.view(1, -1), use_cache=False).logits[0].float()
    return Recording(
        tokens=tokens.view(-1),
        resid0=store["resid0"][0].float(),
        mlp_in={l: store[("in", l)][0].float() for l in range(n_layers)},
        mlp_out={l: store[("out", l)][0].float() for l in range(n_layers)},
        final=store["final"][0].float(),
        logits=logits,
        denominators=freezer.denominators,
        patterns=freezer.patterns,
    )


def _mlp_replaced(stack: ExitStack, model, family: Family, layer: int, fn) -> None:
    """Layer `layer`'s MLP output becomes fn() (its MLP, and a sandwich block's post-norm, do not run)."""
    out_mod = module_at(model, family.mlp_out_site(layer))
    mods = [out_mod]
    if "mlp_out_prenorm" in family.kinds.values():
        mods.append(module_at(model, family.site(layer, "mlp_out_prenorm")))  # the MLP itself, before the post-norm
    for mod in mods:
        mod.forward = (lambda *a, **k: fn()) if mod is out_mod else (lambda x, *a, **k: x)
        stack.callback(mod.__dict__.pop, "forward", None)


def frozen_forward(
    model: nn.Module, rec: Recording, coders: ReplacementCoders, n: int, resid0: torch.Tensor, mlp_out: dict
) -> FrozenRun:
    """The frozen forward over the first `n` tokens. `resid0` [1, n, d] and `mlp_out[l]` [1, n, d] are what
    enters the residual stream (leaves: pass tensors that require grad to differentiate); each MLP's output
    is its leaf plus its skip transcoder's linear term of its (frozen-normed) input. Returns the leaves and
    the tensors a target reads. Runs with grad enabled."""
    family = family_of(model)
    freezer = _Freezer(model, family, "frozen", rec)
    store: dict = {}
    n_layers = len(model.get_submodule(family.blocks))
    with ExitStack() as stack:
        stack.enter_context(_frozen_model(model, freezer))
        _block0_input(stack, model, family, store, replace=resid0)
        for layer in range(n_layers):
            a, _ = _sites(family, layer)
            _capture(stack, module_at(model, a), store, ("in", layer))

            def out_fn(layer=layer):
                return mlp_out[layer] + coders.skip(layer, store[("in", layer)])

            _mlp_replaced(stack, model, family, layer, out_fn)
        _capture(stack, model.get_submodule(family.final_norm), store, "final")
        with torch.enable_grad():
            _run_base(model, rec, n)
    return FrozenRun(resid0, mlp_out, {l: store[("in", l)] for l in range(n_layers)}, store["final"])


def _run_base(model: nn.Module, rec: Recording, n: int) -> None:
    """The transformer without its LM head (targets read the final norm's output; the vocab-wide logits
    are never needed)."""
    base = model.get_submodule(model.base_model_prefix) if model.base_model_prefix else model
    base(input_ids=rec.tokens[:n].view(1, -1), use_cache=False)
