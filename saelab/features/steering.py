"""One steering request, checked and run the same way for `saelab steer` and the web app.

A `SteeringRequest` steers either by SAE feature edits (clamp / add, absolute or a multiple of the
latent's max activation) or by a contrastive direction (mean activation of positive prompts minus
negative prompts, added at a hookpoint x `scale`), never both. `run_steering` builds the steer,
describes it, and generates the unsteered and steered continuations of every prompt with the same
seed. `strengths` multiplies every edit value (or the contrastive scale): several give a sweep,
side by side, same seed. Each steered text carries the actual values used and a `degenerate` flag.
Loading the SAE, the model and the max activations is the caller's (steer.py has the parts).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..models import resolve_hookpoints
from ..option_checks import check_types, need_at_least
from ..options import dtype_option, model_option, opt, threads_option
from ..sae import SparseCoder
from .steer import (
    FeatureEdit,
    FeatureSteer,
    check_edits,
    contrastive_direction,
    degenerate,
    direction_steer,
    generate_variants,
    parse_edit,
)

DEFAULT_STRENGTH = 1.0  # clamp to 1 x max activation: docs/research/view.md "Steering defaults"
SWEEP = (0.5, 1.0, 2.0, 4.0)  # the strength sweep of the web app and `saelab steer --sweep`
MAX_STRENGTHS = 8
# generation is token by token with the full prompt re-run: without a bound, --max-new-tokens 100000000 never
# ends; 4096 is far past where steered text stays readable (the web app allows 200)
MAX_NEW_TOKENS = 4096


@dataclass
class SteeringRequest:
    prompts: list[str]
    edits: list[FeatureEdit] = field(default_factory=list)  # SAE feature edits ...
    positive: list[str] = field(default_factory=list)  # ... or a contrastive direction
    negative: list[str] = field(default_factory=list)
    hookpoint: str | None = None  # contrastive: where (default: the SAE's site)
    scale: float = 4.0  # contrastive: multiplier of the direction
    max_new_tokens: int = 40
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: every token
    seed: int = 0
    chat: bool = False
    strengths: list[float] = field(default_factory=lambda: [1.0])  # multipliers of every edit / the scale

    @property
    def contrastive(self) -> bool:
        return bool(self.positive or self.negative)

    @property
    def needs_max_acts(self) -> bool:
        """Some edit is a multiple of the latent's max activation."""
        return any(e.relative for e in self.edits)

    def check(self) -> None:
        """What can be checked before the SAE loads."""
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"--max-new-tokens must be in 1..{MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):  # -1 ran greedy, silently
            raise UserError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: every token), got {self.top_k}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if not math.isfinite(self.scale):
            raise UserError(f"--scale must be a finite number, got {self.scale}")
        if self.contrastive and self.edits:
            raise UserError(
                "steer either by SAE features (--clamp/--add) or by a contrastive direction "
                "(--positive/--negative), not both"
            )
        if not self.contrastive and not self.edits:
            raise UserError("nothing to steer: give --clamp/--add edits, or --positive and --negative prompts")
        if not 1 <= len(self.strengths) <= MAX_STRENGTHS:
            raise UserError(f"give 1 to {MAX_STRENGTHS} strengths, not {len(self.strengths)}")
        bad = [x for x in self.strengths if not (math.isfinite(x) and abs(x) <= 100)]
        if bad:
            raise UserError(f"strength {bad[0]} is not a finite multiplier in [-100, 100]")

    def check_sae(self, sae: SparseCoder | None) -> None:
        """What needs the SAE (None: steering without one)."""
        if sae is not None:
            check_edits(self.edits, sae.cfg.d_sae)
        elif not self.contrastive:
            raise UserError("feature edits need an SAE folder")
        if self.contrastive and not (self.hookpoint or sae is not None):
            raise UserError("a contrastive direction needs --hookpoint (or an SAE folder, whose site is used)")
        if self.contrastive and not self.hookpoint and sae is not None and "+" in sae.cfg.hookpoint:
            raise UserError("a contrastive direction with a multi-site dictionary (a CLT) needs --hookpoint")


@dataclass
class SteerConfig:
    """`saelab steer`: one SAE folder (or none, for a contrastive direction at --hookpoint), the prompts,
    the edits (`LATENT=V` or `LATENT=Vx`, V x the latent's max activation) and how to generate."""

    prompt: list[str] = opt(help="one or more prompts")
    sae: str | None = opt(
        None, "SAE folder (leave out for a contrastive direction with --hookpoint; default: none)", positional=True
    )
    clamp: list[str] = opt(
        default_factory=list, help="set latent to V (or Vx = V x max activation)", metavar="LATENT=V", shown="none"
    )
    add: list[str] = opt(
        default_factory=list,
        help="add V (or V x max) to the latent = V x its decoder direction",
        metavar="LATENT=V",
        shown="none",
    )
    max_new_tokens: int = opt(40, "tokens to generate per prompt")
    temperature: float = opt(0.0, "sampling temperature, 0 = greedy")
    top_k: int = opt(0, "sample from the k most likely tokens, 0 = all")
    seed: int = opt(0, "sampling seed, the same for steered and unsteered")
    chat: bool = opt(False, "wrap the prompt in the model's chat template")
    cache: str | None = opt(
        None, "latent cache with the features' max activations, for Vx values", shown="build one over --tokens"
    )
    tokens: int = opt(
        16384,
        "held-out tokens to cache for max activations when there is no --cache, as in "
        "dashboard/serve (--stats-tokens: the old spelling)",
        old_spellings=("--stats-tokens",),
    )
    model: str | None = model_option(None, shown="the SAE's own, else embedded")
    hookpoint: str | None = opt(None, "contrastive baseline: where to add the direction", shown="the SAE's site")
    positive: list[str] | None = opt(None, "contrastive baseline: prompts of the concept")
    negative: list[str] | None = opt(None, "contrastive baseline: prompts without it")
    scale: float = opt(4.0, "contrastive baseline: multiplier of the direction")
    strengths: list[float] = opt(
        default_factory=lambda: [1.0],
        metavar="X",
        help="multiply every edit value (or --scale) by each X: one steered text per X, same seed",
    )
    sweep: bool = opt(False, f"same as --strengths {' '.join(f'{x:g}' for x in SWEEP)}")
    json: str | None = opt(None, "also write the outputs to this JSON file")
    dtype: str = dtype_option()
    threads: int | None = threads_option()

    def request(self) -> SteeringRequest:
        """The steering request (edits parsed, checked before the SAE loads)."""
        edits = [parse_edit(e, "clamp") for e in self.clamp] + [parse_edit(e, "add") for e in self.add]
        req = SteeringRequest(
            strengths=list(SWEEP) if self.sweep else self.strengths,
            prompts=self.prompt,
            edits=edits,
            positive=self.positive or [],
            negative=self.negative or [],
            hookpoint=self.hookpoint,
            scale=self.scale,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=self.seed,
            chat=self.chat,
        )
        req.check()
        return req

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "threads", "tokens")
        self.request()


@dataclass
class SteeringResult:
    steering: str  # what was steered, in words
    results: list[dict] = field(default_factory=list)  # per prompt: {prompt, unsteered, steered, sweep, warnings}
    warnings: list[str] = field(default_factory=list)  # edits that change nothing (never_fired)


def never_fired(edits: list[FeatureEdit], max_acts: torch.Tensor | None) -> list[str]:
    """One sentence per relative edit of a latent that never fired on the cached tokens (max activation 0):
    a multiple of 0 is 0, so clamping or adding it leaves the model as it was; said, never silently run."""
    if max_acts is None:
        return []
    return [
        f"feature {e.latent} never fired on the cached tokens (max activation 0): {e.value:g}x its max activation "
        f"is 0, so this {e.op} does not steer; give an absolute value instead"
        for e in edits
        if e.relative and not float(max_acts[e.latent]) > 0
    ]


def sink_positions(cfg_json: dict | None) -> int:
    """Leading positions the SAE never saw (its recorded sink setting; 1 when unknown): never edited."""
    return int((cfg_json or {}).get("saelab", {}).get("sink", {}).get("first_positions", 1))


def run_steering(
    request: SteeringRequest,
    model,
    tokenizer,
    sae: SparseCoder | None = None,
    max_acts: torch.Tensor | None = None,
    skip_first: int = 1,
    lock: threading.Lock | None = None,
    on_token: Callable[[int, int, int, int], None] | None = None,
    on_result: Callable[[str, dict], None] | None = None,
    cancel: threading.Event | None = None,
) -> SteeringResult:
    """Unsteered and steered continuations of each prompt (same seed), one steered text per strength.
    `max_acts` [d_sae]: the latents' max activations, needed for relative edits; `lock` is held per
    forward; `on_token(generation, n_generations, tokens_done, max_new_tokens)` reports progress
    within a prompt, `on_result(steering, result)` each prompt as it finishes; `cancel` stops it.
    A result: {prompt, unsteered, steered (the first strength's text), sweep: [{strength, edits:
    [{latent, op, value}], text, degenerate}], warnings: [a sentence per edit that changes nothing]}."""
    request.check()
    request.check_sae(sae)
    variants = []  # (strength, steer, [{latent, op, value}], words)
    if request.contrastive:
        hp = request.hookpoint or sae.cfg.out_hookpoint or sae.cfg.hookpoint
        resolve_hookpoints(model, [hp])
        direction = contrastive_direction(model, tokenizer, hp, request.positive, request.negative, skip_first)
        for x in request.strengths:
            st = direction_steer(hp, direction, request.scale * x, skip_first)
            words = f"contrastive direction at {hp} (norm {float(direction.norm()):.2f}) x {request.scale * x:.3g}"
            variants.append((x, st, [], words))
        sae = None
    else:
        for x in request.strengths:
            edits = [FeatureEdit(e.latent, e.op, e.value * x, e.relative) for e in request.edits]
            st = FeatureSteer(edits, max_acts, skip_first)
            used = [{"latent": lat, "op": op, "value": v} for lat, op, v in st.edits]
            variants.append(
                (
                    x,
                    st,
                    used,
                    ", ".join(
                        f"{e.op} {e.latent} {'+' if e.op == 'add' else '->'} {v:.3g}"
                        + (f" ({e.value}x max)" if e.relative else "")
                        for e, (_, _, v) in zip(edits, st.edits)
                    ),
                )
            )
    what = variants[0][3] if len(variants) == 1 else "; ".join(f"x{x:g}: {w}" for x, _, _, w in variants)
    out = SteeringResult(what, warnings=never_fired(request.edits, max_acts))
    for prompt in request.prompts:
        texts = generate_variants(
            model,
            tokenizer,
            sae,
            prompt,
            [None] + [v[1] for v in variants],
            request.max_new_tokens,
            request.temperature,
            request.top_k,
            request.seed,
            chat=request.chat,
            lock=lock,
            cancel=cancel,
            on_token=on_token,
        )
        sweep = [
            {
                "strength": x,
                "edits": used,
                "steering": w,
                "text": t,
                "degenerate": degenerate(t, request.max_new_tokens),
            }
            for (x, _, used, w), t in zip(variants, texts[1:])
        ]
        r = {"prompt": prompt, "unsteered": texts[0], "steered": texts[1], "sweep": sweep, "warnings": out.warnings}
        out.results.append(r)
        if on_result:
            on_result(what, r)
    return out
