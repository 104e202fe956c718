"""What an attribution graph explains: its targets, as rows to compute (a vector read at a site and position).

The default targets are the prompt's most likely next tokens (at most `max_n_logits`, covering
`desired_logit_prob`), each weighted by its probability; a logit is demeaned over the vocabulary, as
circuit-tracer's (the unembedding row minus the mean row, read through the frozen final norm). Custom
targets: a logit difference b - a, or one feature at a layer and position (its pre-activation minus bias).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..families import family_of


@dataclass(frozen=True)
class AttributionTarget:
    """What the graph explains: a logit (demeaned, as circuit-tracer), a logit difference b - a, or a feature."""

    kind: str  # "logit" | "logit_diff" | "feature"
    token: int = -1
    other: int = -1  # logit_diff: the subtracted token
    layer: int = -1
    position: int = -1
    feature: int = -1

    @classmethod
    def logit(cls, token: int) -> AttributionTarget:
        return cls("logit", token=int(token))

    @classmethod
    def logit_diff(cls, b: int, a: int) -> AttributionTarget:
        return cls("logit_diff", token=int(b), other=int(a))

    @classmethod
    def of_feature(cls, layer: int, position: int, feature: int) -> AttributionTarget:
        return cls("feature", layer=int(layer), position=int(position), feature=int(feature))


@dataclass
class Row:
    """One row to compute: a vector injected at a site's position (site = model layer's MLP input, or
    L = the final norm's output)."""

    site: int
    position: int
    vector: torch.Tensor  # [d]


def salient_logits(logits: torch.Tensor, max_n: int, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top logits of the last position covering `prob` of the probability, at most `max_n`."""
    probs = torch.softmax(logits.double(), -1).float()
    top_p, top_i = probs.topk(min(max_n, len(probs)))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0).cpu(), torch.tensor(prob))) + 1
    return top_i[:cutoff], top_p[:cutoff]


def target_rows(model, rec, coders, targets, max_n_logits, desired_logit_prob):
    """-> (rows, token ids (-1 for custom), labels, weights, inputs) of the targets."""
    family = family_of(model)
    unembed = family.unembedding(model)
    if unembed is None:
        raise UserError("the model has no unembedding (LM head): there are no logits to attribute")
    last, L, vocab = rec.n_pos - 1, len(rec.mlp_in), unembed.shape[0]
    probs = torch.softmax(rec.logits[-1].double(), -1).float()
    rows, tokens, labels, weights = [], [], [], []
    if targets is None:
        ids, p = salient_logits(rec.logits[-1], max_n_logits, desired_logit_prob)
        targets = [AttributionTarget.logit(i) for i in ids.tolist()]
    mean = unembed.mean(0)
    for t in targets:
        for tok in (t.token, t.other) if t.kind != "feature" else ():
            if tok != -1 and not 0 <= tok < vocab:
                raise UserError(f"target token id {tok} is not in the vocabulary (0..{vocab - 1})")
        if t.kind == "logit":
            rows.append(Row(L, last, unembed[t.token] - mean))
            tokens.append(t.token)
            weights.append(float(probs[t.token]))
        elif t.kind == "logit_diff":
            rows.append(Row(L, last, unembed[t.token] - unembed[t.other]))
            tokens.append(-1)
            weights.append(1.0)
        elif t.kind == "feature":
            if not coders.has(t.layer) or not 0 <= t.feature < coders.n_features(t.layer):
                raise UserError(f"target feature {t.layer}/{t.feature}: no such feature in the replacement")
            if not 0 <= t.position < rec.n_pos:
                raise UserError(f"target position {t.position} is outside the prompt (0..{rec.n_pos - 1})")
            vec = coders.encoder_vectors(t.layer, torch.tensor([t.feature], device=unembed.device))[0]
            rows.append(Row(t.layer, t.position, vec))
            tokens.append(-1)
            weights.append(1.0)
        else:
            raise UserError(f"unknown target kind {t.kind!r}")
        labels.append(t)
    w = torch.tensor(weights)
    if targets and all(t.kind != "logit" for t in targets):
        w = w / len(w)
    return rows, tokens, labels, w


def target_label(t: AttributionTarget, name: Callable[[int], str]) -> str:
    if t.kind == "logit":
        return name(t.token)
    if t.kind == "logit_diff":
        return f"{name(t.token)!r} - {name(t.other)!r}"
    return f"L{t.layer}/P{t.position}/F{t.feature}"
