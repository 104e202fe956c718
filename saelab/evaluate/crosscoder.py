"""Metrics of a crosscoder (sae/crosscoder.py) on held-out rows: what `saelab eval` reports for one.

Reconstruction (over `tokens` non-sink positions, truncated forward to the deepest site): FVU per
site and overall (total squared error over the sites' summed variance), cosine per site, L0,
dead/dense fractions.

Downstream (over `ce_tokens`): every site spliced at once. A crosscoder is acausal (the
reconstruction at layer 4 reads layer 8), so it cannot be spliced within one forward: a clean
forward records every site, the crosscoder reconstructs all of them from those clean activations,
and a second forward replaces each site's output with its reconstruction (sink/outlier positions
keep the spliced forward's own activation, the rule `saelab eval` applies to one-site SAEs). KL
and CE increase are of that forward against the clean one. Model diffing (a `ModelPair`): the
reconstruction is spliced into each model separately (`spliced_per_model`: model_a, model_b).

A cross-layer transcoder (sae/clt.py) is measured the same way on its output sites: FVU of every MLP
output predicted from the clean MLP inputs, then every MLP output replaced by that prediction (open
loop: from the clean forward's inputs, not the spliced ones; the causal replacement is the replacement
folder's evaluation).
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model_pair import ModelPair
from ..models import collect_activations, patch_activation
from ..sae.crosscoder import SEP, CrosscoderSae, sites
from ..sinks import SinkConfig, excluded_positions, special_ids
from .metrics import EvalBudget, _ce_kl, _record, batches, heldout_selection


def out_sites(cfg) -> list[str]:
    """The sites a multi-site dictionary predicts: its output sites (clt), or the sites it reads (crosscoder)."""
    return cfg.out_hookpoint.split(SEP) if cfg.out_hookpoint else sites(cfg)


@torch.no_grad()
def crosscoder_metrics(
    model, tokenizer, sae: CrosscoderSae, sink: SinkConfig, rows, budget: EvalBudget, device: str = "cpu"
) -> dict:
    names, outs = sites(sae.cfg), out_sites(sae.cfg)  # a multi-site transcoder (clt) predicts other sites
    special = special_ids(tokenizer)
    n_site = len(outs)
    err, sq, tot, cos = (torch.zeros(n_site, dtype=torch.float64) for _ in range(4))
    s1 = torch.zeros(n_site, sae.cfg.d_out // n_site, dtype=torch.float64)
    n, l0, fires, excluded, total = 0, 0.0, torch.zeros(sae.cfg.d_sae), 0, 0
    for ids in tqdm(
        list(batches(rows, heldout_selection(rows, budget.tokens), budget.batch_rows, device)),
        desc="eval: crosscoder reconstruction",
        leave=False,
    ):
        acts = collect_activations(model, ids, list(dict.fromkeys(names + outs)))
        drop = excluded_positions([acts[h] for h in acts], ids, sink, special)
        x = torch.cat([acts[h][~drop].float() for h in names], -1)
        lat = sae.encode_raw(x)
        y_hat = sae.split_sites(sae.decode(lat) / sae.out_scale)
        for i, (h, yh) in enumerate(zip(outs, y_hat)):
            y = acts[h][~drop].float()
            err[i] += (yh - y).pow(2).sum().item()
            sq[i] += y.pow(2).sum().item()
            s1[i] += y.sum(0).double()
            cos[i] += F.cosine_similarity(yh, y, dim=-1).sum().item()
        n += x.shape[0]
        l0 += lat.l0_per_row().sum().item()
        fires += lat.fire_counts().float()
        excluded += int(drop.sum())
        total += drop.numel()
    n = max(n, 1)
    var = sq - s1.pow(2).sum(1) / n  # sum ||y - mean||^2 per site
    freq = fires / n
    out = {
        "sites": names,
        "fvu": (err.sum() / var.sum()).item(),
        "fvu_per_site": {h: (err[i] / var[i]).item() for i, h in enumerate(outs)},
        "cosine_per_site": {h: (cos[i] / n).item() for i, h in enumerate(outs)},
        "l0": l0 / n,
        "dead_fraction": (freq == 0).float().mean().item(),
        "dense_fraction": (freq > 0.1).float().mean().item(),
        "excluded_fraction": excluded / max(total, 1),
        "eval_tokens": n,
    }
    if budget.ce_tokens > 0:
        out |= _spliced_all_sites(model, sae, names, outs, sink, special, rows, budget, device)
    return out


def _spliced_all_sites(model, sae, names, outs, sink, special, rows, budget, device) -> dict:
    # A model pair (model diffing, model_pair.py) is spliced one model at a time: the crosscoder
    # reconstructs every site of both from their clean forwards, then A runs with A's sites replaced
    # and B with B's, each against its own clean distribution. One model: one part, every site.
    pair = isinstance(model, ModelPair)
    parts = model.parts(outs) if pair else [("", model, outs)]
    sums = {tag: [0.0, 0.0, 0.0] for tag, _, _ in parts}  # clean CE, spliced CE, KL
    n_pred = 0
    for ids in tqdm(
        list(batches(rows, heldout_selection(rows, budget.ce_tokens), budget.ce_batch_rows, device)),
        desc="eval: crosscoder splice / CE",
        leave=False,
    ):
        store: dict[str, torch.Tensor] = {}
        handles = [_record(model, h, store) for h in dict.fromkeys(names + outs)]  # through a pair: either model
        try:
            clean = {tag: _ce_kl(m(input_ids=ids, use_cache=False).logits, ids, None) for tag, m, _ in parts}
        finally:
            for hd in handles:
                hd.remove()
        drop = excluded_positions([store[h] for h in store], ids, sink, special)[..., None]
        x = torch.cat([store[h].float() for h in names], -1)
        recon = dict(zip(outs, sae.split_sites(sae.reconstruct(x))))
        for tag, m, own in parts:
            with ExitStack() as stack:
                for h in own:
                    stack.enter_context(
                        patch_activation(model, h, lambda a, r=recon[h], drop=drop: torch.where(drop, a, r.to(a.dtype)))
                    )
                ce_s, kl_s, _ = _ce_kl(m(input_ids=ids, use_cache=False).logits, ids, clean[tag][2])
            s = sums[tag]
            s[0], s[1], s[2] = s[0] + clean[tag][0], s[1] + ce_s, s[2] + kl_s
        n_pred += ids.shape[0] * (ids.shape[1] - 1)
    n = max(n_pred, 1)
    per = {
        tag: {
            "kl": kl / n,
            "ce_clean": ce / n,
            "ce_spliced": ce_s / n,
            "ce_increase": (ce_s - ce) / n,
            "ce_eval_tokens": n,
        }
        for tag, (ce, ce_s, kl) in sums.items()
    }
    return {"spliced_per_model": per} if pair else per[""]


def crosscoder_report(name: str, m: dict, target) -> str:
    """The line `saelab eval` prints for a crosscoder (and, model diffing, its per-model splices and latent counts)."""
    sites = ", ".join(f"{h} {v:.4f}" for h, v in m["fvu_per_site"].items())
    line = f"{name}: FVU {m['fvu']:.4f} (per site: {sites}), L0 {m['l0']:.1f}"
    if "kl" in m:
        line += f"; all sites spliced: KL {m['kl']:.4f}, CE increase {m['ce_increase']:+.4f}"
    for tag, s in m.get("spliced_per_model", {}).items():
        line += f"; {tag} spliced: KL {s['kl']:.4f}, CE increase {s['ce_increase']:+.4f}"
    if "model_diff" in m:
        d = m["model_diff"]
        line += f"; latents A-only {d['a_only']}, B-only {d['b_only']}, shared {d['shared']}"
    return line + f" -> {target}"
