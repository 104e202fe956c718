"""Intervention scorer: steer the subject LM along the latent's output direction and measure how
much more likely the explanation becomes (Paulo et al. 2024, intervention scoring, simplified).

Steering adds `scale` x (the latent's largest cached activation) x its decoder row at the cache's
`steer_hookpoint` (the SAE's site; for neurons the output of the Linear they feed; for a cross-layer
transcoder's latent its decoder into its own layer's MLP output, added there: its writes to later
layers are left out, an approximation), at every position after the first. For a few prompts (the
start of the latent's random non-activating examples, then "\nThis text is about"), we compare the
log-probability per token of " E" (the explanation) with and without steering; the same is done
for fixed control phrases.
score = delta(explanation) - mean delta(controls): positive when steering makes the explanation,
specifically, more likely.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...models import patch_activation
from ..examples import LatentExamples
from .base import ScoreResult

CONTROLS = ["the weather", "a list of numbers", "cooking recipes", "sports results", "family and friends"]


class InterventionScorer:
    name = "intervention"

    def __init__(self, lm, cache, dictionary: str, scale: float = 2.0, n_prompts: int = 4, prompt_tokens: int = 16):
        self.lm, self.scale, self.n_prompts, self.prompt_tokens = lm, scale, n_prompts, prompt_tokens
        info = cache.info(dictionary)
        self.hook = info.get("steer_hookpoint")
        self.site = lambda latent: cache.steer_site(dictionary, latent)  # a CLT latent: its own layer's output
        self.decoder = cache.decoder(dictionary)
        self.max_act = cache.max_activation(dictionary)
        self.tail = lm.tokenizer("\nThis text is about", add_special_tokens=False).input_ids
        bos = lm.tokenizer.bos_token_id
        self.bos = [bos] if bos is not None else []

    def _phrase(self, s: str) -> list[int]:
        return self.lm.tokenizer(" " + s, add_special_tokens=False).input_ids

    @torch.no_grad()
    def _mean_lp(self, prompts, phrases) -> np.ndarray:
        """[n_phrases] mean over prompts of mean log-prob per phrase token (one right-padded batch of
        whole sequences, so the steering hook sees true sequence positions)."""
        seqs = [(p, f) for p in prompts for f in phrases]
        n = max(len(p) + len(f) for p, f in seqs)
        x = torch.zeros(len(seqs), n, dtype=torch.long)
        for r, (p, f) in enumerate(seqs):
            x[r, : len(p) + len(f)] = torch.tensor(p + f)
        dev = next(self.lm.model.parameters()).device
        lp = torch.log_softmax(self.lm.model(input_ids=x.to(dev)).logits.float(), -1).cpu()  # [S, n, vocab]
        vals = np.zeros((len(prompts), len(phrases)))
        for r, (p, f) in enumerate(seqs):
            idx = torch.arange(len(p) - 1, len(p) + len(f) - 1)
            vals[r // len(phrases), r % len(phrases)] = float(lp[r, idx, torch.tensor(f)].mean())
        return vals.mean(0)

    def score(self, ex: LatentExamples, explanation: str) -> ScoreResult:
        t0 = time.time()
        if self.decoder is None or not self.hook:
            return ScoreResult.failure(
                self.name,
                ex.latent,
                "this dictionary has no known output direction (decoder) in the cache, so it cannot be steered",
            )
        sources = (ex.random or ex.hard)[: self.n_prompts]
        if not sources:
            return ScoreResult.failure(self.name, ex.latent, "no non-activating examples to use as prompts")
        prompts = [self.bos + e.tokens[: self.prompt_tokens] + self.tail for e in sources]
        phrases = [self._phrase(explanation)] + [self._phrase(c) for c in CONTROLS]
        clean = self._mean_lp(prompts, phrases)
        vec = self.scale * float(self.max_act[ex.latent]) * self.decoder[ex.latent]  # [d_model]

        def add(x):
            x = x.clone()
            x[:, 1:] += vec.to(x.device, x.dtype)
            return x

        with patch_activation(self.lm.model, self.site(ex.latent), add):
            steered = self._mean_lp(prompts, phrases)
        delta = steered - clean
        metrics = {
            "score": float(delta[0] - delta[1:].mean()),
            "delta_explanation": float(delta[0]),
            "delta_controls": float(delta[1:].mean()),
            "clean_logprob": float(clean[0]),
        }
        return ScoreResult(self.name, ex.latent, True, metrics, None, time.time() - t0, "lm", 0, len(prompts))
