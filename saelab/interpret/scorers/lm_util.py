"""Per-example losses of the subject LM after a shared prefix (its KV cache computed once)."""

from __future__ import annotations

import copy

import torch


def cache_kw(model, cache) -> dict:
    """The KV-cache keyword of this transformers version (`cache`, formerly `past_key_values`)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


@torch.no_grad()
def suffix_logprobs(model, prefix: list[int], suffixes: list[list[int]], batch: int = 16) -> list[torch.Tensor]:
    """log P(suffix token t | prefix, suffix[:t]) for every token of every suffix: list of [len_i].

    The prefix runs once; its cache is copied per batch. Suffixes are right-padded (a causal model
    never lets a real token attend to padding after it)."""
    from transformers import DynamicCache

    assert prefix, "the prefix must hold at least one token (e.g. BOS)"
    dev = next(model.parameters()).device
    pre = DynamicCache()
    out_pre = model(
        input_ids=torch.tensor([prefix], device=dev), **cache_kw(model, pre), use_cache=True, logits_to_keep=1
    )
    last_pre = torch.log_softmax(out_pre.logits[0, -1].float(), -1).cpu()  # predicts each suffix's first token
    res: list[torch.Tensor] = []
    pad = 0
    for b in range(0, len(suffixes), batch):
        chunk = suffixes[b : b + batch]
        n = max(len(s) for s in chunk)
        x = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), len(prefix) + n, dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for r, s in enumerate(chunk):
            x[r, : len(s)] = torch.tensor(s)
            mask[r, len(prefix) : len(prefix) + len(s)] = 1
        cache = copy.deepcopy(pre)
        cache.batch_repeat_interleave(len(chunk))
        lp = torch.log_softmax(
            model(
                input_ids=x.to(dev), attention_mask=mask.to(dev), **cache_kw(model, cache), use_cache=True
            ).logits.float(),
            -1,
        ).cpu()  # [B, n, vocab]
        for r, s in enumerate(chunk):
            t = torch.tensor(s)
            first = last_pre[t[0]].unsqueeze(0)
            rest = lp[r, : len(s) - 1].gather(-1, t[1:, None]).squeeze(-1)
            res.append(torch.cat([first, rest]))
    return res
