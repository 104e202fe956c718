"""Steer a model by editing SAE features while it generates (Templeton et al. 2024).

An edit clamps a latent to a value (absolute, or a multiple of the latent's maximum observed
activation) or adds a value to it (= adds that multiple of its decoder direction to the
activation). The SAE is spliced with its reconstruction error kept (`splice.spliced(...,
error_term=True)`), so with no edit the model's output is bitwise its own; only the change of the
decoded latents is added to the activation. A cross-layer transcoder's latent (global id l * n + j) is
edited at its encoder layer l and its change decoded into the MLP output of every layer from l on
(`splice.clt_spliced`, features/clt_features.py), errors kept the same way.

Generation is our own small KV-cached loop (one forward per new token) so that:
  - the same `seed` gives the same random stream to the steered and the unsteered run
    (a private torch.Generator, never the global one: safe in a web server's threads);
  - a lock can be taken per forward, so other requests on the same model interleave;
  - progress can be reported per token.
Edits skip the first `skip_first` absolute positions (the attention sink the SAE never saw);
`FeatureSteer` counts positions across KV-cached steps to know where it is. It also works
inside Hugging Face `model.generate` (tested).

The baseline (`contrastive_direction`) steers without an SAE: the difference of mean
activations at the hookpoint between two sets of prompts, added with a multiplier.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..models import collect_activations, patch_activation
from ..sae import SparseCoder
from ..sae.splice import clt_spliced, spliced
from .clt_features import CltLayerEdit, clt_sites, is_clt

OPS = ("clamp", "add")


@dataclass(frozen=True)
class FeatureEdit:
    latent: int
    op: str  # clamp | add
    value: float
    relative: bool = False  # value is a multiple of the latent's max observed activation

    def resolved(self, max_acts: torch.Tensor | None) -> float:
        if not self.relative:
            return self.value
        if max_acts is None:
            raise UserError(
                f"latent {self.latent}: a relative value ({self.value}x) needs the latents' max activations"
            )
        return self.value * float(max_acts[self.latent])


_EDIT_RX = re.compile(r"^\s*(\d+)\s*=\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*(x?)\s*$")


def parse_edit(text: str, op: str) -> FeatureEdit:
    """`123=8` (absolute) or `123=4x` (4 x max activation) -> FeatureEdit."""
    m = _EDIT_RX.match(text)
    if not m or op not in OPS:
        raise UserError(
            f"cannot read the {op} edit {text!r}: expected LATENT=VALUE or LATENT=MULTIPLEx, e.g. 123=8 or 123=4x"
        )
    return FeatureEdit(int(m.group(1)), op, float(m.group(2)), bool(m.group(3)))


def check_edits(edits: Iterable[FeatureEdit], d_sae: int) -> None:
    for e in edits:
        if not 0 <= e.latent < d_sae:
            raise UserError(f"latent {e.latent} does not exist: this SAE has latents 0..{d_sae - 1}")
        if e.op not in OPS:
            raise UserError(f"unknown edit op {e.op!r} (use one of {OPS})")
        if not torch.isfinite(torch.tensor(e.value)) or abs(e.value) > 1e6:
            raise UserError(f"latent {e.latent}: value {e.value} is not a sensible finite number")


class _PositionCounter:
    """Knows the absolute position of each row of a [batch, T, ...] activation across KV steps."""

    def __init__(self, skip_first: int):
        self.skip_first = skip_first
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def mask(self, t: int, device) -> torch.Tensor:
        """Bool [t]: True at positions that may be edited; advances the counter."""
        p = torch.arange(self.pos, self.pos + t, device=device)
        self.pos += t
        return p >= self.skip_first


class SinkKeep(_PositionCounter):
    """The `keep` of `spliced` as a function of the sequence: bool [T], True at the first `skip_first`
    positions of a sequence (the sink positions a dictionary was trained without keep the model's own
    activation), counted across KV steps."""

    def __call__(self, t: int, device) -> torch.Tensor:
        return ~self.mask(t, device)


class FeatureSteer(_PositionCounter):
    """The `edit` for `spliced`: dense latents [batch, T, d_sae] -> edited latents."""

    def __init__(self, edits: list[FeatureEdit], max_acts: torch.Tensor | None = None, skip_first: int = 1):
        super().__init__(skip_first)
        self.edits = [(e.latent, e.op, e.resolved(max_acts)) for e in edits]

    def __call__(self, dense: torch.Tensor) -> torch.Tensor:
        m = self.mask(dense.shape[-2], dense.device)
        for latent, op, v in self.edits:
            col = dense[..., latent]
            new = torch.full_like(col, v) if op == "clamp" else col + v
            dense[..., latent] = torch.where(m, new, col)
        return dense


class DirectionSteer(_PositionCounter):
    """Adds `scale * direction` to the activation (the contrastive baseline)."""

    def __init__(self, direction: torch.Tensor, scale: float, skip_first: int = 1):
        super().__init__(skip_first)
        self.delta = direction * scale  # [d]

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        m = self.mask(act.shape[-2], act.device)
        return act + m[:, None].to(act.dtype) * self.delta.to(act.dtype)


def steering_context(model, sae: SparseCoder | None, steer) -> Callable:
    """A factory of context managers that put `steer` into one forward (None -> the clean model)."""
    if steer is None:
        return nullcontext
    if isinstance(steer, DirectionSteer):
        return lambda: patch_activation(model, steer.hookpoint, steer)
    if is_clt(sae):  # edited at its encoder layer, decoded into every later layer's MLP output
        ins, outs = clt_sites(sae)
        layer_edit = CltLayerEdit(steer, sae.n_per_layer)
        return lambda: clt_spliced(model, sae, ins, outs, error_term=True, edit=layer_edit)
    return lambda: spliced(model, sae, error_term=True, edit=steer)


class Cancelled(Exception):
    """A generation stopped because its `cancel` event was set."""


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only
    token_ids: list[int] = field(default_factory=list)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt's token ids, BOS first when the tokenizer has one (like the training rows): what steering,
    attribution graphs and their validation all feed the model."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids and ids[0] != bos:
        ids = [bos] + ids
    return ids


def encode_prompt(tokenizer, prompt: str, chat: bool = False, max_tokens: int = 1024) -> torch.Tensor:
    """[1, T] ids; BOS first when the tokenizer has one (like the training rows)."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = prompt_ids(tokenizer, prompt)
    if len(ids) > max_tokens:
        raise UserError(f"the prompt is {len(ids)} tokens; the limit is {max_tokens}")
    if not ids:
        raise UserError("the prompt is empty")
    return torch.tensor([ids], dtype=torch.long)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    ids: torch.Tensor,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    context: Callable = nullcontext,
    lock: threading.Lock | None = None,
    on_token: Callable[[int, int], None] | None = None,
    reset: Callable[[], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[int]:
    """KV-cached sampling of one row. `context()` is entered around every forward (the steering
    hook); `lock` is held only during a forward; `cancel` set -> `Cancelled` before the next forward.
    Returns the new token ids."""
    if reset:
        reset()
    gen = torch.Generator().manual_seed(seed)
    lock = lock or nullcontext()
    device = next(model.parameters()).device
    cur, past, out_ids = ids.to(device), None, []
    eos = tokenizer.eos_token_id
    key = _cache_kwarg(model)
    for step in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        with lock, context():
            out = model(input_ids=cur, use_cache=True, **({key: past} if past is not None else {}))
        past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[0, -1].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=gen))
        out_ids.append(nxt)
        if on_token:
            on_token(step + 1, max_new_tokens)
        if nxt == eos:
            break
        cur = torch.tensor([[nxt]], device=device)
    return out_ids


def _cache_kwarg(model) -> str:
    """transformers >= 5 calls the KV cache `cache`; older versions `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def generate_variants(
    model,
    tokenizer,
    sae: SparseCoder | None,
    prompt: str,
    steers: list,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    chat: bool = False,
    lock: threading.Lock | None = None,
    cancel: threading.Event | None = None,
    on_token: Callable[[int, int, int, int], None] | None = None,
) -> list[str]:
    """The continuation of `prompt` under each steer (None: the clean model), all with the same seed.
    `on_token(generation, n_generations, tokens_done, max_new_tokens)` after every token."""
    ids = encode_prompt(tokenizer, prompt, chat)
    out = []
    for i, s in enumerate(steers):
        cb = (lambda k, n, i=i: on_token(i, len(steers), k, n)) if on_token else None
        new = generate(
            model,
            tokenizer,
            ids,
            max_new_tokens,
            temperature,
            top_k,
            seed,
            steering_context(model, sae, s),
            lock,
            cb,
            getattr(s, "reset", None),
            cancel,
        )
        out.append(tokenizer.decode(new, skip_special_tokens=True))
    return out


def steer_compare(
    model,
    tokenizer,
    sae: SparseCoder | None,
    prompt: str,
    steer,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    chat: bool = False,
    lock: threading.Lock | None = None,
) -> dict:
    """Unsteered and steered continuations of `prompt` with the same seed -> {"unsteered", "steered"}."""
    clean, steered = generate_variants(
        model, tokenizer, sae, prompt, [None, steer], max_new_tokens, temperature, top_k, seed, chat, lock
    )
    return {"unsteered": clean, "steered": steered}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
SHORT_WORDS = 3  # a continuation of fewer words, when at least SHORT_ASKED tokens were asked for, is "very short"
SHORT_ASKED = 8


def degenerate(text: str, max_new_tokens: int | None = None) -> str | None:
    """Why a continuation is not usable text, or None: empty; mostly whitespace (a run of newlines);
    mostly symbols; one short pattern repeated (`.com.com.com`, `\\n\\nThe\\n\\nThe`); a few words
    repeated; a sentence repeated (`I love cats. I love cats.`); very short (under SHORT_WORDS words when
    `max_new_tokens`, if given, asked for SHORT_ASKED or more: the model stopped at once). Shown next to
    steered outputs so a too-strong edit is flagged, not trusted."""
    body = text.strip()
    if not body:
        return "empty (only whitespace)" if text else "empty"
    if sum(ch.isspace() for ch in text) > 0.5 * len(text):
        return "mostly whitespace"
    visible = [ch for ch in text if not ch.isspace()]
    if sum(ch.isalpha() for ch in visible) < 0.5 * len(visible):
        return "mostly symbols or digits"
    if len(text) >= 20:
        for period in range(1, 13):
            same = sum(text[i] == text[i + period] for i in range(len(text) - period))
            if same >= 0.6 * (len(text) - period):
                return f"repeats a {period}-character pattern"
    words = text.split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.3:
        return f"repetitive ({len(set(words))} distinct words of {len(words)})"
    sentences = [" ".join(x.lower().split()) for x in _SENTENCE_END.split(body) if x.strip()]
    counts = {x: sentences.count(x) for x in sentences}
    repeated = sum(c for c in counts.values() if c > 1)
    if repeated and repeated >= 0.5 * len(sentences):  # the last, cut-off sentence counts as one more
        top = max(counts, key=counts.get)
        return f"repeats the sentence {top!r} ({counts[top]} times)"
    if len(words) < SHORT_WORDS and (max_new_tokens is None or max_new_tokens >= SHORT_ASKED):
        return f"very short ({len(words)} word{'s' if len(words) > 1 else ''})"
    return None


@torch.no_grad()
def contrastive_direction(
    model, tokenizer, hookpoint: str, positive: list[str], negative: list[str], skip_first: int = 1
) -> torch.Tensor:
    """mean activation over the positive prompts' tokens - mean over the negative ones, [d]."""
    if not positive or not negative:
        raise UserError("a contrastive direction needs at least one positive and one negative prompt")

    def mean_act(prompts):
        tot, n = None, 0
        for p in prompts:
            ids = encode_prompt(tokenizer, p)
            a = collect_activations(model, ids, [hookpoint])[hookpoint][0, skip_first:]  # [T, d]
            if a.shape[0] == 0:
                continue
            tot = a.sum(0) if tot is None else tot + a.sum(0)
            n += a.shape[0]
        if n == 0:
            raise UserError("the contrastive prompts are too short (no token after the sink position)")
        return tot / n

    return mean_act(positive) - mean_act(negative)


def direction_steer(hookpoint: str, direction: torch.Tensor, scale: float, skip_first: int = 1) -> DirectionSteer:
    s = DirectionSteer(direction, scale, skip_first)
    s.hookpoint = hookpoint
    return s
