"""One steering request, checked and run the same way for `saelab steer` and the web app.

A `SteeringRequest` steers either by SAE feature edits (clamp / add, absolute or a multiple of the
latent's max activation) or by a contrastive direction (mean activation of positive prompts minus
negative prompts, added at a hookpoint x `scale`), never both. `run_steering` builds the steer,
describes it, and generates the unsteered and steered continuations of every prompt with the same
seed. Loading the SAE, the model and the max activations is the caller's (steer.py has the parts).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UserError
from ..models import resolve_hookpoints
from ..sae import SparseCoder
from .steer import FeatureEdit, FeatureSteer, check_edits, contrastive_direction, direction_steer, steer_compare


@dataclass
class SteeringRequest:
    prompts: list[str]
    edits: list[FeatureEdit] = field(default_factory=list)   # SAE feature edits ...
    positive: list[str] = field(default_factory=list)        # ... or a contrastive direction
    negative: list[str] = field(default_factory=list)
    hookpoint: str | None = None                             # contrastive: where (default: the SAE's site)
    scale: float = 4.0                                       # contrastive: multiplier of the direction
    max_new_tokens: int = 40
    temperature: float = 0.0                                 # 0: greedy
    top_k: int = 0                                           # 0: every token
    seed: int = 0
    chat: bool = False

    @property
    def contrastive(self) -> bool:
        return bool(self.positive or self.negative)

    @property
    def needs_max_acts(self) -> bool:
        """Some edit is a multiple of the latent's max activation."""
        return any(e.relative for e in self.edits)

    def check(self) -> None:
        """What can be checked before the SAE loads."""
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be positive")
        if self.contrastive and self.edits:
            raise UserError("steer either by SAE features (--clamp/--add) or by a contrastive direction "
                            "(--positive/--negative), not both")
        if not self.contrastive and not self.edits:
            raise UserError("nothing to steer: give --clamp/--add edits, or --positive and --negative prompts")

    def check_sae(self, sae: SparseCoder | None) -> None:
        """What needs the SAE (None: steering without one)."""
        if sae is not None:
            check_edits(self.edits, sae.cfg.d_sae)
        elif not self.contrastive:
            raise UserError("feature edits need an SAE folder")
        if self.contrastive and not (self.hookpoint or sae is not None):
            raise UserError("a contrastive direction needs --hookpoint (or an SAE folder, whose site is used)")


@dataclass
class SteeringResult:
    steering: str                                            # what was steered, in words
    results: list[dict] = field(default_factory=list)        # per prompt: {prompt, unsteered, steered}


def sink_positions(cfg_json: dict | None) -> int:
    """Leading positions the SAE never saw (its recorded sink setting; 1 when unknown): never edited."""
    return int((cfg_json or {}).get("saelab", {}).get("sink", {}).get("first_positions", 1))


def run_steering(request: SteeringRequest, model, tokenizer, sae: SparseCoder | None = None,
                 max_acts: torch.Tensor | None = None, skip_first: int = 1, lock: threading.Lock | None = None,
                 on_token: Callable[[int, int], None] | None = None,
                 on_result: Callable[[str, dict], None] | None = None) -> SteeringResult:
    """Unsteered and steered continuations of each prompt (same seed). `max_acts` [d_sae]: the latents'
    max activations, needed for relative edits; `lock` is held per forward; `on_token(done, total)`
    reports progress within a prompt, `on_result(steering, result)` each prompt as it finishes."""
    request.check()
    request.check_sae(sae)
    if request.contrastive:
        hp = request.hookpoint or sae.cfg.out_hookpoint or sae.cfg.hookpoint
        resolve_hookpoints(model, [hp])
        direction = contrastive_direction(model, tokenizer, hp, request.positive, request.negative, skip_first)
        steer = direction_steer(hp, direction, request.scale, skip_first)
        what = f"contrastive direction at {hp} (norm {float(direction.norm()):.2f}) x {request.scale}"
        sae = None
    else:
        steer = FeatureSteer(request.edits, max_acts, skip_first)
        what = ", ".join(f"{e.op} {e.latent} {'+' if e.op == 'add' else '->'} {v:.3g}"
                         + (f" ({e.value}x max)" if e.relative else "")
                         for e, (_, _, v) in zip(request.edits, steer.edits))
    out = SteeringResult(what)
    for prompt in request.prompts:
        r = {"prompt": prompt, **steer_compare(model, tokenizer, sae, prompt, steer, request.max_new_tokens,
                                               request.temperature, request.top_k, request.seed, chat=request.chat,
                                               lock=lock, on_token=on_token)}
        out.results.append(r)
        if on_result:
            on_result(what, r)
    return out
