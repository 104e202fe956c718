"""The logit lens of a dictionary's latents: which tokens each decoder direction promotes / suppresses when
written straight to the residual stream, read through the model's final norm and unembedding (as its family
defines them, families.py: Gemma's 1 + weight). One implementation for the feature pages
(view/feature_store.py) and the Python API's `LatentCache.logit_effects` (api/latents.py)."""

from __future__ import annotations

import torch

from ..families import family_of

Ranked = tuple[torch.Tensor, torch.Tensor]  # (token ids int64 [n, k], logits float32 [n, k]), strongest first


@torch.no_grad()
def logit_lens(model, W: torch.Tensor, k: int, chunk: int = 512) -> tuple[Ranked, Ranked] | None:
    """(promoted, suppressed) tokens of each row of `W` [n, d_model] (decoder directions): the `k` largest and
    the `k` smallest logits of `final_norm(W) @ U.T`, U the unembedding [vocab, d_model]. None when the
    directions are not as wide as the residual stream (an MLP-internal site: no logit lens)."""
    fam = family_of(model)
    U = fam.unembedding(model)  # [vocab, d_model]
    if U is None or U.shape[1] != W.shape[1]:
        return None
    norm = fam.final_norm_fn(model)
    W = W.to(device=U.device, dtype=U.dtype)
    top_v, top_i, bot_v, bot_i = [], [], [], []
    for s in range(0, W.shape[0], chunk):
        lg = norm(W[s : s + chunk]) @ U.T  # [chunk, vocab]
        t = lg.topk(k, dim=1)
        b = lg.topk(k, dim=1, largest=False)
        top_v.append(t.values), top_i.append(t.indices), bot_v.append(b.values), bot_i.append(b.indices)
    return (torch.cat(top_i), torch.cat(top_v)), (torch.cat(bot_i), torch.cat(bot_v))
