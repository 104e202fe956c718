"""The steering benchmark's methods and its batched greedy generation, through the steering code that
`saelab steer` uses (features/steer.py: `FeatureSteer` in `spliced(..., error_term=True)`, `DirectionSteer`
in `patch_activation`, entered by `steering_context`); nothing here hooks the model itself.

Every generation starts from a neutral prompt (NEUTRAL). For one prompt, the rows of a batch are the
(concept, strength) pairs of one method plus a zero row (no edit), so each row carries its own edit:
  sae         add v to the concept's best latent, v = s x site norm x out_scale / |W_dec[j]|: the activation
              moves by s x (the site's mean activation norm) along the latent's decoder direction
              (FeatureEdit's value is then a [rows, 1] tensor, one value per row: `FeatureSteer` adds it as is)
  diff_means  add s x site norm x the unit difference-of-means direction at the same site (`DirectionSteer`
              with a [rows, 1, d] direction)
  prompting   no edit: the concept's instruction, a blank line, then the neutral prompt (rows grouped by length)
With a zero edit the spliced forward is bitwise the clean one (the reconstruction error is kept), so the zero
row is the unsteered text; the metric checks it against the clean generation (`zero_equals_baseline`).
Rows of a batch have the same prompt, hence the same length: no padding, no attention mask."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from ...features.steer import FeatureEdit, FeatureSteer, _cache_kwarg, direction_steer, prompt_ids, steering_context

NEUTRAL = ("I think that", "The best way to", "Yesterday,", "Here is")
# multiples of the site's mean activation norm (0: the unsteered zero row); dense below 0.5, where greedy text of
# the embedded model leaves 2x the unsteered perplexity (measured: docs/EVAL.md), and 1.0 to show the breakdown
STRENGTHS = (0.125, 0.25, 0.375, 0.5, 1.0)
NEW_TOKENS = 24


@torch.no_grad()
def greedy(
    model, ids: torch.Tensor, n_new: int, eos: int | None, context: Callable = nullcontext, reset=None
) -> list[list[int]]:
    """KV-cached greedy continuation of every row of ids [B, T] (the same loop as steer.generate, batched):
    each row's new ids, cut after its first EOS (kept: the fluency judge scores the choice to stop)."""
    if reset:
        reset()
    key = _cache_kwarg(model)
    device = next(model.parameters()).device
    cur, past, out = ids.to(device), None, []
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(n_new):
        with context():
            o = model(input_ids=cur, use_cache=True, **({key: past} if past is not None else {}))
        past = getattr(o, "cache", None) or getattr(o, "past_key_values", None)
        nxt = o.logits[:, -1].float().argmax(-1)  # [B]
        out.append(nxt.cpu())
        done |= nxt.cpu() == (-1 if eos is None else eos)
        if bool(done.all()):
            break
        cur = nxt[:, None]
    rows = torch.stack(out, 1).tolist()
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


def feature_steer(latents: list[int | None], values: list[float], skip: int, device="cpu") -> FeatureSteer:
    """One FeatureSteer for a batch: row i adds values[i] to latent latents[i] (None: no edit)."""
    edits = []
    for j in sorted({lat for lat in latents if lat is not None}):
        v = torch.tensor([x if lat == j else 0.0 for lat, x in zip(latents, values)], device=device)[:, None]
        edits.append(FeatureEdit(j, "add", v))  # a value per row, [B, 1]
    return FeatureSteer(edits, None, skip)


def direction_rows(site: str, deltas: torch.Tensor, skip: int):
    """One DirectionSteer for a batch: row i adds deltas[i] [d] at `site`."""
    return direction_steer(site, deltas[:, None, :], 1.0, skip)


def steered(model, sae, prompts: list[list[int]], make_steer: Callable, n_rows: int, n_new: int, eos) -> list:
    """Per prompt, the batch of `n_rows` rows under `make_steer()` (a fresh steer per prompt: it counts
    positions) -> [prompt][row] new ids."""
    out = []
    for p in prompts:
        st = make_steer()
        ids = torch.tensor([p] * n_rows, dtype=torch.long)
        out.append(greedy(model, ids, n_new, eos, steering_context(model, sae, st), st.reset))
    return out


def clean(model, rows: list[list[int]], n_new: int, eos) -> list[list[int]]:
    """Unsteered greedy continuations of prompts of any lengths (batched by length), in input order."""
    out: list = [None] * len(rows)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    for idx in by_len.values():
        gens = greedy(model, torch.tensor([rows[i] for i in idx], dtype=torch.long), n_new, eos)
        for i, g in zip(idx, gens):
            out[i] = g
    return out


def neutral_ids(tokenizer, prompts=NEUTRAL) -> list[list[int]]:
    return [prompt_ids(tokenizer, p) for p in prompts]


def instructed_ids(tokenizer, instruction: str, prompts=NEUTRAL) -> list[list[int]]:
    return [prompt_ids(tokenizer, f"{instruction}\n\n{p}") for p in prompts]
