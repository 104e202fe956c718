"""Forward passes for end-to-end SAE training: one clean pass per batch, then per SAE a spliced
pass that starts at the hookpoint instead of at the embeddings.

Why: an e2e step needs the clean next-token distribution (no grad, shared by every SAE) and a
forward with the SAE's output in place of the activation at its site, differentiated back to the
SAE only. The blocks before the site give the same result in both passes, so the spliced pass
swaps them for stubs that return the cached clean tensor: the prefix runs once per batch. The
model's own forward still builds masks and rotary embeddings, so any decoder-only HF model
whose blocks sit in one ModuleList works; `check_head` refuses a model whose logits are not
`lm_head(last_hidden_state)` (with optional soft-capping) instead of training on wrong numbers.

Where the spliced pass starts, for a site S in block i (replaced site = out_hookpoint or hookpoint):
  - S is the block output `model.layers.i`: blocks 0..i are stubs, the last returning the
    replacement; later blocks are i+1..L-1.
  - S is inside block i (`model.layers.i.mlp`, `...:input`): blocks 0..i-1 are stubs returning
    block i's clean input; block i runs with S spliced; later blocks are i..L-1.
  - S is before the blocks (embeddings): nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..models import decoder_layers, first_tensor, layer_index, module_at, patch_activation


@dataclass(frozen=True)
class SitePlan:
    """How the spliced pass for one replaced site runs."""

    site: str  # the replaced site
    block: int  # block index of the site (-1 before the first block)
    block_output: bool  # the site is the whole block's output
    skip: int  # blocks replaced by stubs (0..skip-1)
    later: tuple[int, ...]  # blocks whose output follows the site (downstream layers)

    @property
    def resume_key(self) -> str | None:
        """What the last stub returns: the site itself or block `block`'s input."""
        if self.skip == 0:
            return None
        return self.site if self.block_output else f"__input_of_block_{self.block}"


def plan_site(model: nn.Module, site: str) -> SitePlan:
    prefix, layers = decoder_layers(model)
    n = len(layers)
    i = layer_index(model, site)
    whole = site == f"{prefix}.{i}"
    if i < 0:
        return SitePlan(site, -1, False, 0, tuple(range(n)))
    if whole:
        return SitePlan(site, i, True, i + 1, tuple(range(i + 1, n)))
    return SitePlan(site, i, False, i, tuple(range(i, n)))


def layer_name(model: nn.Module, j: int) -> str:
    return f"{decoder_layers(model)[0]}.{j}"


# ---------------------------------------------------------------- the head


def _base_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or head is None or base is model:
        raise UserError(
            f"{type(model).__name__}: e2e training needs a causal LM with a base model and an output "
            f"head (like LlamaForCausalLM)"
        )
    return base, head


def logits_of(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head(last_hidden_state), with the final soft-capping some models use."""
    _, head = _base_and_head(model)
    logits = head(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def check_head(model: nn.Module, device: str = "cpu") -> None:
    """Refuse models whose logits are computed differently from `logits_of` (checked on 2 x 8 tokens)."""
    base, _ = _base_and_head(model)
    ids = torch.arange(3, 19, device=device).reshape(2, 8) % model.config.vocab_size
    ref = model(input_ids=ids, use_cache=False).logits.float()
    ours = logits_of(model, base(input_ids=ids, use_cache=False).last_hidden_state).float()
    if not torch.allclose(ref, ours, atol=1e-3 * (1 + ref.abs().max().item()), rtol=1e-3):
        raise UserError(
            f"{type(model).__name__}: its logits are not lm_head(last hidden state); e2e training "
            f"does not support this architecture"
        )


# ---------------------------------------------------------------- the clean pass


@dataclass
class CleanPass:
    ids: torch.Tensor  # [B, T]
    acts: dict[str, torch.Tensor]  # site or resume key -> [B, T, d] (no grad)
    later: dict[int, torch.Tensor]  # block j -> its clean output [B, T, d]
    logp: torch.Tensor  # [B, T, V] clean next-token log-probs (float32)
    tuple_blocks: bool  # blocks return tuples (older transformers) rather than tensors


def _record_input(store: dict, key: str):
    def pre(m, args, kwargs):
        store[key] = args[0] if args else kwargs["hidden_states"]

    return pre


@torch.no_grad()
def clean_pass(
    model: nn.Module, ids: torch.Tensor, sites: list[str], plans: list[SitePlan], later_blocks: set[int]
) -> CleanPass:
    """Full forward without grad; records the SAE input sites, stub tensors and later block outputs."""
    base, _ = _base_and_head(model)
    _, layers = decoder_layers(model)
    store: dict[str, torch.Tensor] = {}
    later: dict[int, torch.Tensor] = {}
    kinds: list[bool] = []
    handles = []
    try:
        for s in sites:
            mod = module_at(model, s)
            if s.endswith(":input"):
                handles.append(mod.register_forward_pre_hook(lambda m, a, s=s: store.__setitem__(s, a[0])))
            else:
                handles.append(mod.register_forward_hook(lambda m, a, o, s=s: store.__setitem__(s, first_tensor(o))))
        for p in plans:
            if p.resume_key and not p.block_output:
                handles.append(
                    layers[p.block].register_forward_pre_hook(_record_input(store, p.resume_key), with_kwargs=True)
                )

        def rec_block(j):
            def fn(m, a, o):
                kinds.append(isinstance(o, tuple))
                if j in later_blocks:
                    later[j] = first_tensor(o)

            return fn

        for j, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(rec_block(j)))
        hidden = base(input_ids=ids, use_cache=False).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    logits = logits_of(model, hidden).float()
    logp = torch.log_softmax(logits, -1, out=logits)  # in place: no second [B, T, V] tensor
    return CleanPass(ids, store, later, logp, bool(kinds and kinds[0]))


# ---------------------------------------------------------------- the spliced pass


class _Stub(nn.Module):
    """Stands in for a block before the site: returns the cached tensor, computes nothing."""

    def __init__(self, value: torch.Tensor, as_tuple: bool, original: nn.Module):
        super().__init__()
        self.value, self.as_tuple = value, as_tuple
        if hasattr(original, "attention_type"):
            self.attention_type = original.attention_type

    def forward(self, *args, **kwargs):
        return (self.value,) if self.as_tuple else self.value


class _Later(nn.Module):
    """Wraps a block after the site: records its output, optionally recomputes it in backward."""

    def __init__(self, layer: nn.Module, j: int, store: dict, recompute: bool):
        super().__init__()
        self.layer, self.j, self.store, self.recompute = layer, j, store, recompute
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, *args, **kwargs):
        if self.recompute and torch.is_grad_enabled():
            out = checkpoint(self.layer, *args, use_reentrant=False, **kwargs)
        else:
            out = self.layer(*args, **kwargs)
        self.store[self.j] = first_tensor(out)
        return out


@contextmanager
def _swapped(layers: nn.ModuleList, new: dict[int, nn.Module]) -> Iterator[None]:
    old = {j: layers[j] for j in new}
    try:
        for j, m in new.items():
            layers[j] = m
        yield
    finally:
        for j, m in old.items():
            layers[j] = m


def spliced_pass(
    model: nn.Module, clean: CleanPass, plan: SitePlan, replacement: torch.Tensor, recompute: bool = False
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Forward from the site with `replacement` [B, T, d] in place of the site's activation.

    -> (last hidden state [B, T, d] after the final norm, {block j: output [B, T, d]} for later blocks).
    Gradients reach `replacement` through the later blocks only (model weights are frozen)."""
    base, _ = _base_and_head(model)
    _, layers = decoder_layers(model)
    outs: dict[int, torch.Tensor] = {}
    new: dict[int, nn.Module] = {}
    for j in range(plan.skip):
        last = j == plan.skip - 1
        if last:
            value = replacement if plan.block_output else clean.acts[plan.resume_key]
        else:
            value = clean.acts.get(plan.resume_key)  # any tensor of the right shape: its output is ignored
        new[j] = _Stub(value, clean.tuple_blocks, layers[j])
    for j in range(plan.skip, len(layers)):
        new[j] = _Later(layers[j], j, outs, recompute)
    with ExitStack() as stack:
        if not plan.block_output:  # hook the site's module before the blocks are wrapped
            stack.enter_context(patch_activation(model, plan.site, _const(replacement)))
        stack.enter_context(_swapped(layers, new))
        hidden = base(input_ids=clean.ids, use_cache=False).last_hidden_state
    return hidden, {j: outs[j] for j in plan.later}


def _const(value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        if act.shape != value.shape:
            raise UserError(
                f"e2e splice: the site's activation has shape {tuple(act.shape)}, expected {tuple(value.shape)}"
            )
        return value.to(act.dtype)

    return fn


def kl_to_clean(
    model: nn.Module, hidden: torch.Tensor, clean_logp: torch.Tensor, chunk: int = 1024, recompute: bool = False
) -> torch.Tensor:
    """Sum over positions of KL(p_clean || p_spliced), computing logits `chunk` positions at a time.

    hidden [B, T, d] (with grad), clean_logp [B, T, V]. Memory is one chunk of logits: the gradient
    with respect to `hidden` is computed chunk by chunk in the forward (`_HeadKL`), so no logits are
    kept for backward and none are recomputed (`recompute` is accepted for the caller's symmetry)."""
    _, head = _base_and_head(model)
    if not isinstance(head, nn.Linear):
        raise UserError(f"{type(model).__name__}: e2e training needs a linear output head, not {type(head).__name__}")
    cap = float(getattr(model.config, "final_logit_softcapping", None) or 0.0)
    h = hidden.reshape(-1, hidden.shape[-1])
    c = clean_logp.reshape(-1, clean_logp.shape[-1])
    return _HeadKL.apply(h, head.weight, head.bias, c, cap, chunk)


# Reused [rows, vocab] scratch buffers of the KL head, by (role, device): a fresh 200 MB tensor per
# chunk (1,024 x 49,152 floats) costs more in page faults than the pass that fills it (measured on the
# 2-core CPU: `x - y` 152 ms, `x.sub_(y)` 25 ms). They live as long as the process (3 x chunk x vocab
# floats, ~600 MB at the default chunk); `release_head_buffers()` frees them.
_HEAD_BUFFERS: dict[tuple[str, str], torch.Tensor] = {}


def _head_buffer(role: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    key = (role, str(device))
    buf = _HEAD_BUFFERS.get(key)
    if buf is None or buf.numel() < rows * cols:
        _HEAD_BUFFERS.pop(key, None)  # free the old one before allocating the larger one
        buf = _HEAD_BUFFERS[key] = torch.empty(rows * cols, dtype=torch.float32, device=device)
    return buf[: rows * cols].view(rows, cols)


def release_head_buffers() -> None:
    _HEAD_BUFFERS.clear()


class _HeadKL(torch.autograd.Function):
    """KL(p_clean || softmax(head(h))) summed over positions, with d/dh computed in the forward.

    Why: the autograd version keeps [N, V] log-probs for backward and makes ~12 passes over them
    (log_softmax, exp, sub, mul, sum and their backward), each into a freshly allocated [N, V]
    tensor; here each chunk of logits makes 11 passes, all in place in reused buffers, and nothing of
    size V is kept. Per position, with z the logits, p the clean probabilities, l = log p:
        KL = sum_v p (l - log q),  log q = z - logsumexp(z),     dKL/dz = q sum_v p - p,
    and dKL/dh = dKL/dz @ W (through the soft-cap's tanh when the model has one). The head's weight
    is frozen (e2e trains the SAE only), so it gets no gradient."""

    @staticmethod
    def forward(ctx, h, weight, bias, clean_logp, cap, chunk):
        want_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grads = []
        vocab = weight.shape[0]
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk]
            n = hc.shape[0]
            if hc.dtype == weight.dtype == torch.float32:
                z = torch.mm(hc, weight.t(), out=_head_buffer("z", n, vocab, h.device))
                if bias is not None:
                    z.add_(bias)
            else:  # bfloat16 / float16 models: the logits in their dtype, then float32
                z = _head_buffer("z", n, vocab, h.device).copy_(F.linear(hc, weight, bias))
            if cap:  # z <- cap * tanh(z / cap), keeping tanh for the gradient
                t = torch.tanh(z.div_(cap), out=_head_buffer("t", n, vocab, h.device))
                z = torch.mul(t, cap, out=z)
            lc = clean_logp[s : s + chunk].float()
            top = z.amax(-1, keepdim=True)
            e = torch.sub(z, top, out=_head_buffer("e", n, vocab, h.device)).exp_()  # exp(z - max)
            esum = e.sum(-1, keepdim=True)
            p = torch.exp(lc, out=_head_buffer("p", n, vocab, h.device))
            psum = p.sum(-1, keepdim=True)
            logq_minus_l = z.sub_(top + esum.log()).sub_(lc)  # log q - l, per element: no cancellation
            total -= torch.dot(p.flatten(), logq_minus_l.flatten())
            if want_grad:
                g = e.mul_(psum / esum).sub_(p)  # q sum p - p
                if cap:
                    g.mul_(t.mul_(t).neg_().add_(1))
                grads.append(g.to(weight.dtype) @ weight)
        if want_grad:
            ctx.save_for_backward(torch.cat(grads).to(h.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (g,) = ctx.saved_tensors
        return g * grad_out.to(g.dtype), None, None, None, None, None
