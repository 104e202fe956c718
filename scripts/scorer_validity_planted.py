"""Scorer validity on planted token latents with the embedded model (issue 30 item 4): each offline
scorer must rank a latent's own explanation ("the token 'function'") above another latent's. Prints
each scorer's right-vs-wrong AUC with its 95% bootstrap interval over latents (saelab/interpret/validity.py).

    PYTHONPATH=. python scripts/scorer_validity_planted.py [embedding surprisal detection fuzzing intervention]

The subject model is also the judge of detection/fuzzing (the local client on the embedded model). For
intervention a planted latent writes its word: its decoder row is the word's (tied) input embedding,
scaled to norm 3, added at model.layers.20 (max activation 1, --steer-scale 1).
"""

from __future__ import annotations

import sys
import time
from pydoc_data import topics

import numpy as np
import torch

from saelab.interpret.validity import planted_token_latents, scorer_validity
from saelab.models import load_model


class PlantedCache:
    """The parts of a latent cache the intervention scorer reads, for planted latents writing their word."""

    def __init__(self, lm, hook: str, words: list[int], norm: float = 3.0):
        emb = lm.model.get_input_embeddings().weight.detach()
        self.hook, self.dec = hook, torch.stack([emb[t] / emb[t].norm() for t in words]) * norm  # [latents, d]
        self.mx = np.ones(len(words))

    def info(self, name):
        return {"steer_hookpoint": self.hook}

    def steer_site(self, name, latent):
        return self.hook

    def decoder(self, name):
        return self.dec

    def max_activation(self, name):
        return self.mx


def build(kind: str, lm, examples):
    if kind == "embedding":
        from saelab.interpret.scorers.embedding import EmbeddingScorer

        return EmbeddingScorer(lm.tokenizer)
    if kind == "surprisal":
        from saelab.interpret.scorers.surprisal import SurprisalScorer

        return SurprisalScorer(lm)
    if kind in ("detection", "fuzzing"):
        from saelab.interpret.clients import make_client
        from saelab.interpret.scorers.judged import JudgeScorer

        return JudgeScorer(kind, make_client("local", None, lm=lm), lm.tokenizer, "logprob")
    from saelab.interpret.scorers.intervention import InterventionScorer

    words = [e.activating[0].tokens[e.activating[0].peak] for e in examples]
    return InterventionScorer(lm, PlantedCache(lm, "model.layers.20", words), "planted", scale=1.0)


def main(kinds: list[str]) -> None:
    torch.set_num_threads(2)
    lm = load_model("embedded")
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))[:150000]
    examples, expl = planted_token_latents(lm.tokenizer, text, n_latents=12, window=16, n_act=10, n_neg=10)
    print("planted:", ", ".join(expl.values()))
    print("| scorer | metric | latents | mean own | mean shuffled | right-vs-wrong AUC | 95% interval | verdict | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        t0 = time.time()
        v = scorer_validity(build(kind, lm, examples), examples, expl)
        print(
            f"| {kind} | {v['metric']} | {v['n']} | {v['mean_right']:.3f} | {v['mean_wrong']:.3f} | {v['auc']:.3f} | "
            f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}] | {v['verdict']} | {time.time() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["embedding", "surprisal", "detection", "fuzzing", "intervention"])
