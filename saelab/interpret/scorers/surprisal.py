"""Surprisal scorer: does the explanation, placed before an example, lower the subject LM's loss
more on activating examples than on non-activating ones? Needs no judge LLM.

For each example x: gain(x) = NLL(x | "Text:") - NLL(x | "Explanation: E\nText:") in nats per
token (mean over the window's tokens, the cache's own token ids). AUC of gain, activating vs not.
"""

from __future__ import annotations

import time

import numpy as np

from ..examples import LatentExamples
from .base import ScoreResult, auc
from .lm_util import suffix_logprobs


class SurprisalScorer:
    name = "surprisal"

    def __init__(self, lm, batch: int = 16):
        self.lm, self.batch = lm, batch
        tok = lm.tokenizer
        self.bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        self._plain = self.bos + tok("Text:\n", add_special_tokens=False).input_ids

    def _prefix(self, explanation: str) -> list[int]:
        return self.bos + self.lm.tokenizer(f"Explanation: {explanation}\nText:\n", add_special_tokens=False).input_ids

    def score(self, ex: LatentExamples, explanation: str) -> ScoreResult:
        t0 = time.time()
        examples = ex.scoring
        toks = [e.tokens for e in examples]
        plain = suffix_logprobs(self.lm.model, self._plain, toks, self.batch)
        withe = suffix_logprobs(self.lm.model, self._prefix(explanation), toks, self.batch)
        gains = np.array([float((w - p).mean()) for p, w in zip(plain, withe)])
        y = np.array([e.activating for e in examples], bool)
        metrics = {
            "auc": auc(y, gains),
            "mean_gain_activating": float(gains[y].mean()),
            "mean_gain_negative": float(gains[~y].mean()),
        }
        preds = [[e.id, int(l), float(g)] for e, l, g in zip(examples, y, gains)]
        return ScoreResult(
            self.name, ex.latent, True, metrics, None, time.time() - t0, "lm", int(y.sum()), int((~y).sum()), 0, preds
        )
