"""Reconstruction error of the residual stream at every block after an SAE's site, with the SAE
spliced in (what Braun et al. 2024 report next to CE loss increase): an SAE that keeps the
model's output right may still send later layers elsewhere, and e2e+ds is meant to prevent it.

FVU_j = sum ||h_j spliced - h_j clean||^2 / sum ||h_j clean - mean||^2 over held-out non-sink
positions (sinks kept clean at the site, as in `evaluate`), using `ce_tokens` of the budget.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import TokenRows
from ..models import collect_activations, decoder_layers, depth_order, layer_index
from ..sae.splice import spliced
from ..sinks import special_ids
from .metrics import EvalBudget, Sinked, batches, heldout_selection, sae_sink_mask
from .results import LaterLayers, SaeMetrics


def later_blocks(model, site: str) -> list[str]:
    """Names of the blocks whose output comes after `site` (its own block too if the site is inside it)."""
    prefix, layers = decoder_layers(model)
    i = layer_index(model, site)
    first = i + 1 if site == f"{prefix}.{i}" else max(i, 0)
    return [f"{prefix}.{j}" for j in range(first, len(layers))]


@torch.no_grad()
def later_layer_fvu(
    model, tokenizer, saes: list[Sinked], rows: TokenRows, budget: EvalBudget, device: str = "cpu"
) -> list[dict[str, float]]:
    """Per SAE: {block name: FVU of that block's output with the SAE spliced in}."""
    special = special_ids(tokenizer)
    sel = heldout_selection(rows, budget.ce_tokens)
    blocks = [later_blocks(model, s.cfg.out_hookpoint or s.cfg.hookpoint) for s, _ in saes]
    needed = depth_order(model, [b for bl in blocks for b in bl])
    acc = [{b: {"err": 0.0, "n": 0, "s": 0.0, "sq": 0.0} for b in bl} for bl in blocks]
    sites = sorted({h for s, _ in saes for h in (s.cfg.hookpoint, s.cfg.out_hookpoint) if h})
    wanted = depth_order(model, needed + sites)
    for ids in tqdm(list(batches(rows, sel, budget.ce_batch_rows, device)), desc="eval: later layers", leave=False):
        clean = collect_activations(model, ids, wanted)
        for i, (sae, sink) in enumerate(saes):
            drop = sae_sink_mask(sae, sink, clean, ids, special)
            keep = ~drop
            with spliced(model, sae, keep=drop):
                after = collect_activations(model, ids, blocks[i])
            for b in blocks[i]:
                ref = clean[b][keep].float()
                a = acc[i][b]
                a["err"] += (after[b][keep].float() - ref).pow(2).sum().item()
                a["n"] += ref.shape[0]
                a["s"] = a["s"] + ref.sum(0)
                a["sq"] += ref.pow(2).sum().item()
    out = []
    for per in acc:
        out.append(
            {
                b: a["err"] / max(a["sq"] - (a["s"] * a["s"]).sum().item() / max(a["n"], 1), 1e-12)
                for b, a in per.items()
            }
        )
    return out


def later_layer_metrics(
    model,
    tokenizer,
    saes: list[Sinked],
    rows: TokenRows,
    budget: EvalBudget,
    metrics: list[SaeMetrics],
    device: str = "cpu",
) -> list[LaterLayers]:
    """Per SAE: alive latents (from its reconstruction metrics) and the later-layer FVU."""
    out = []
    for (sae, _), m, lf in zip(saes, metrics, later_layer_fvu(model, tokenizer, saes, rows, budget, device)):
        out.append(
            LaterLayers(
                alive=round(sae.cfg.d_sae * (1 - m.dead_fraction)),
                later_fvu=lf,
                later_fvu_mean=sum(lf.values()) / max(len(lf), 1),
            )
        )
    return out
