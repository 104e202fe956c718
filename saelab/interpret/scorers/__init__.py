"""Scorers: each takes (LatentExamples, explanation) and returns one ScoreResult per latent.

detection, fuzzing (LLM judge; logprob or generate mode), embedding (MiniLM, no judge),
surprisal (subject LM, no judge), intervention (subject LM steered along the latent)."""

from .base import DESCRIPTIONS, PRIMARY, ScoreResult, auc, classification_metrics

SCORERS = ["detection", "fuzzing", "embedding", "surprisal", "intervention"]
JUDGED = {"detection", "fuzzing"}

__all__ = ["SCORERS", "JUDGED", "PRIMARY", "DESCRIPTIONS", "ScoreResult", "auc", "classification_metrics"]
