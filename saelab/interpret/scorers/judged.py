"""Detection and fuzzing: an LLM judge decides, per example, whether the explanation fits.

detection: the excerpt is shown plain; does the feature described by the explanation occur in it?
fuzzing:   activating excerpts have their active tokens marked <<...>>; non-activating excerpts have
           as many random tokens marked; are the marked tokens described by the explanation?

Two modes, same examples:
  logprob:  one prompt per excerpt, all sent at once; the answer is P(Yes)/(P(Yes)+P(No)) of the
            first reply token (no generation; the local client runs the shared prompt prefix once).
            Gives AUC as well as balanced accuracy (threshold 0.5), F1, precision, recall.
  generate: `batch_examples` excerpts per prompt; the judge writes a list of 0/1 that is parsed;
            a reply that does not parse loses those excerpts (counted, never guessed).
`mode="auto"` uses logprob when the client gives log-probabilities.
"""

from __future__ import annotations

import re
import time

import numpy as np

from ..client_base import YES_NO, LLMClient, normalised_yes
from ..examples import Example, LatentExamples
from ..explainer import TokenText
from ..prompts import judge_batch_messages, judge_messages, render
from .base import ScoreResult, classification_metrics


def parse_binary_list(reply: str | None, n: int) -> list[int] | None:
    """A list of n zeros/ones from a reply like '[1, 0, 1]' (None if it is not exactly that)."""
    if not reply:
        return None
    m = re.search(r"\[([^\[\]]*)\]", reply)
    if not m:
        return None
    items = [x.strip() for x in m.group(1).split(",") if x.strip()]
    if len(items) != n or any(x not in ("0", "1") for x in items):
        return None
    return [int(x) for x in items]


class JudgeScorer:
    def __init__(
        self, kind: str, client: LLMClient, tokenizer, mode: str = "auto", batch_examples: int = 10, seed: int = 0
    ):
        assert kind in ("detection", "fuzzing")
        self.name, self.kind, self.client, self.text = kind, kind, client, TokenText(tokenizer)
        if mode == "auto":
            mode = "logprob" if client.supports_logprobs else "generate"
        if mode == "logprob" and not client.supports_logprobs:
            from ...errors import UserError

            raise UserError(f"the {client.name} client gives no log-probabilities; use --judge-mode generate")
        self.mode, self.batch_examples, self.seed = mode, batch_examples, seed

    def _render(self, e: Example, rng: np.random.Generator, n_marks: list[int]) -> str:
        pieces = self.text.pieces(e.tokens)
        if self.kind == "detection":
            return render(pieces, mark=False)
        if e.activating:
            return render(pieces, e.acts)
        k = int(rng.choice(n_marks)) if n_marks else 1
        marked = [False] * len(pieces)
        for i in rng.choice(len(pieces), size=min(k, len(pieces)), replace=False):
            marked[int(i)] = True
        return render(pieces, marked=marked)

    def score(self, ex: LatentExamples, explanation: str) -> ScoreResult:
        t0 = time.time()
        rng = np.random.default_rng([self.seed, ex.latent, 1 if self.kind == "fuzzing" else 0])
        examples = ex.scoring
        n_marks = [max(1, sum(a > 0 for a in e.acts)) for e in ex.activating]
        texts = [self._render(e, rng, n_marks) for e in examples]
        labels = [int(e.activating) for e in examples]
        calls0 = self.client.usage.to_dict()
        if self.mode == "logprob":
            lps = self.client.choice_logprobs([judge_messages(self.kind, explanation, t) for t in texts], YES_NO)
            probs = [normalised_yes(lp) for lp in lps]
        else:
            probs = [None] * len(texts)
            order = rng.permutation(len(texts))
            batches = [order[i : i + self.batch_examples] for i in range(0, len(order), self.batch_examples)]
            comps = self.client.generate(
                [judge_batch_messages(self.kind, explanation, [texts[i] for i in b]) for b in batches],
                max_tokens=3 * self.batch_examples + 8,
            )
            for b, c in zip(batches, comps):
                answers = parse_binary_list(c.text, len(b)) if c.ok else None
                if answers is not None:
                    for i, a in zip(b, answers):
                        probs[i] = float(a)
        usage = {k: v - calls0[k] for k, v in self.client.usage.to_dict().items()}
        keep = [i for i, p in enumerate(probs) if p is not None]
        n_failed = len(examples) - len(keep)
        seconds = time.time() - t0
        common = dict(
            seconds=seconds,
            mode=self.mode,
            n_activating=len(ex.activating),
            n_negative=len(ex.negatives),
            n_failed_examples=n_failed,
            usage=usage,
        )
        y = [labels[i] for i in keep]
        if not keep or len(set(y)) < 2:
            return ScoreResult.failure(
                self.name,
                ex.latent,
                f"the judge gave usable answers for {len(keep)} of {len(examples)} examples",
                **common,
            )
        p = [probs[i] for i in keep]
        metrics = classification_metrics(y, [q > 0.5 for q in p], p if self.mode == "logprob" else None)
        metrics["mean_p_yes_activating"] = float(np.mean([q for q, l in zip(p, y) if l]))
        metrics["mean_p_yes_negative"] = float(np.mean([q for q, l in zip(p, y) if not l]))
        preds = [[examples[i].id, labels[i], probs[i]] for i in range(len(examples))]
        return ScoreResult(self.name, ex.latent, True, metrics, None, predictions=preds, **common)
