"""Metrics of dictionaries on held-out tokens: reconstruction, sparsity, and effect on the model.

Two budgets: reconstruction metrics (FVU, MSE, cosine, L0, dead/dense) use `tokens` held-out
positions through the truncated forward; downstream metrics (KL, CE increase, CE recovered)
need full forwards, one per variant, and use `ce_tokens` positions. Several SAEs evaluated
together share the clean and ablation passes of their hookpoint.

Sinks: reconstruction metrics are over non-sink positions (the ones the SAE was trained on);
downstream metrics are reported twice: with sink positions kept clean (`*`) and with every
position spliced (`*_all_positions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import TokenRows
from ..models import first_tensor, module_at, collect_activations, patch_activation
from ..sae import SparseCoder
from ..sinks import SinkConfig, excluded_positions, special_ids
from ..sae.splice import spliced
from ..storage import write_figure

DESCRIPTIONS = {
    "fvu": "fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (lower is better)",
    "mse": "mean squared error per element",
    "cosine": "mean cosine similarity between x and x_hat",
    "l0": "mean number of active latents per token",
    "dead_fraction": "fraction of latents that never fired on the evaluation tokens",
    "dense_fraction": "fraction of latents firing on more than 10% of tokens",
    "kl": "KL(clean || spliced) of next-token distributions, nats/token, sinks kept clean",
    "ce_clean": "cross-entropy of the clean model, nats/token",
    "ce_spliced": "cross-entropy with the reconstruction spliced in, sinks kept clean",
    "ce_increase": "ce_spliced - ce_clean, nats/token (lower is better)",
    "ce_zero_ablation": "cross-entropy with the site set to zero (sinks kept clean)",
    "ce_mean_ablation": "cross-entropy with the site set to its mean (sinks kept clean)",
    "ce_recovered_zero": "(ce_zero - ce_spliced) / (ce_zero - ce_clean): 1 = perfect, 0 = as bad as zero-ablation",
    "ce_recovered_mean": "(ce_mean - ce_spliced) / (ce_mean - ce_clean)",
    "kl_all_positions": "KL with every position spliced, sinks included",
    "ce_increase_all_positions": "CE increase with every position spliced, sinks included",
    "excluded_fraction": "fraction of evaluation positions treated as sinks/outliers",
}


@dataclass
class EvalBudget:
    tokens: int = 100_000
    ce_tokens: int = 16_384
    batch_rows: int = 16
    ce_batch_rows: int = 4


def sink_config_of(cfg_json: dict) -> SinkConfig:
    s = cfg_json.get("saelab", {}).get("sink")
    return SinkConfig(**s) if s else SinkConfig()


def sae_sink_mask(sae: SparseCoder, cfg_json: dict, acts: dict[str, torch.Tensor], ids: torch.Tensor,
                  special: list[int]) -> torch.Tensor:
    """Bool [batch, seq]: sink/outlier positions at this SAE's site(s), by the rule it was trained with."""
    c = sae.cfg
    sites = [acts[c.hookpoint]] + ([acts[c.out_hookpoint]] if c.out_hookpoint else [])
    return excluded_positions(sites, ids, sink_config_of(cfg_json), special)


def _rows(rows: TokenRows, tokens: int, context: int) -> np.ndarray:
    held = rows.heldout_rows
    n = min(len(held), max(1, math.ceil(tokens / context)))
    return held[:n]


def _batches(rows: TokenRows, sel: np.ndarray, batch_rows: int, device: str):
    for i in range(0, len(sel), batch_rows):
        yield torch.from_numpy(np.asarray(rows.tokens[sel[i:i + batch_rows]], dtype=np.int64)).to(device)


@torch.no_grad()
def reconstruction_metrics(model, tokenizer, saes: list[tuple[SparseCoder, dict]], rows: TokenRows,
                           budget: EvalBudget, device: str = "cpu") -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Per-SAE reconstruction/sparsity metrics and each input site's mean activation (for mean ablation)."""
    hooks = sorted({h for s, _ in saes for h in (s.cfg.hookpoint, s.cfg.out_hookpoint) if h})
    special = special_ids(tokenizer)
    context = rows.tokens.shape[1]
    acc = [dict(err=0.0, var_sum=0.0, sq=torch.zeros(0), n=0, cos=0.0, l0=[], fires=torch.zeros(s.cfg.d_sae, device=device),
                sum_y=None, sumsq_y=0.0, elems=0) for s, _ in saes]
    site_sum: dict[str, torch.Tensor] = {}
    site_n: dict[str, int] = {}
    excluded = total = 0
    sel = _rows(rows, budget.tokens, context)
    for ids in tqdm(list(_batches(rows, sel, budget.batch_rows, device)), desc="eval: reconstruction", leave=False):
        acts = collect_activations(model, ids, hooks)
        for i, (sae, cfgj) in enumerate(saes):
            c = sae.cfg
            drop = sae_sink_mask(sae, cfgj, acts, ids, special)
            keep = ~drop
            x = acts[c.hookpoint][keep].float()
            y = acts[c.out_hookpoint or c.hookpoint][keep].float()
            lat = sae.encode_raw(x)
            y_hat = sae.decode(lat) / sae.out_scale
            a = acc[i]
            a["err"] += (y_hat - y).pow(2).sum().item()
            a["sum_y"] = y.sum(0) if a["sum_y"] is None else a["sum_y"] + y.sum(0)
            a["sumsq_y"] += y.pow(2).sum().item()
            a["n"] += y.shape[0]
            a["elems"] += y.numel()
            a["cos"] += F.cosine_similarity(y_hat, y, dim=-1).sum().item()
            a["l0"].append(lat.l0_per_row())
            a["fires"] += lat.fire_counts().float()
            if i == 0:
                excluded += int(drop.sum())
                total += drop.numel()
            for h in (c.hookpoint, c.out_hookpoint or c.hookpoint):
                v = acts[h][keep].float()
                site_sum[h] = site_sum.get(h, 0) + v.sum(0)
                site_n[h] = site_n.get(h, 0) + v.shape[0]
    results = []
    for (sae, _), a in zip(saes, acc):
        n = max(a["n"], 1)
        mean = a["sum_y"] / n
        var_sum = a["sumsq_y"] - n * mean.pow(2).sum().item()
        l0 = torch.cat(a["l0"]).float().cpu()
        freq = (a["fires"] / n).cpu()
        results.append({
            "fvu": a["err"] / max(var_sum, 1e-12),
            "mse": a["err"] / max(a["elems"], 1),
            "cosine": a["cos"] / n,
            "l0": l0.mean().item(),
            "dead_fraction": (freq == 0).float().mean().item(),
            "dense_fraction": (freq > 0.1).float().mean().item(),
            "excluded_fraction": excluded / max(total, 1),
            "eval_tokens": n,
            "l0_histogram": np.histogram(l0.numpy(), bins=20)[0].tolist(),
            "l0_histogram_edges": np.histogram(l0.numpy(), bins=20)[1].tolist(),
            "_freq": freq,
        })
    means = {h: site_sum[h] / site_n[h] for h in site_sum}
    return results, means


def _ce_kl(logits: torch.Tensor, ids: torch.Tensor, clean_logp: torch.Tensor | None):
    """Summed next-token CE over positions 0..T-2, and summed KL to the clean distribution."""
    logp = logits[:, :-1].float().log_softmax(-1)
    ce = -logp.gather(-1, ids[:, 1:, None]).sum().item()
    kl = 0.0
    if clean_logp is not None:
        kl = F.kl_div(logp, clean_logp, log_target=True, reduction="sum").item()
    return ce, kl, logp


def _record(model, hookpoint: str, store: dict):
    mod = module_at(model, hookpoint)
    if hookpoint.endswith(":input"):
        return mod.register_forward_pre_hook(lambda m, args: store.__setitem__(hookpoint, args[0]))
    return mod.register_forward_hook(lambda m, a, out: store.__setitem__(hookpoint, first_tensor(out)))


@torch.no_grad()
def downstream_metrics(model, tokenizer, saes: list[tuple[SparseCoder, dict]], rows: TokenRows,
                       means: dict[str, torch.Tensor], budget: EvalBudget, device: str = "cpu") -> list[dict]:
    special = special_ids(tokenizer)
    context = rows.tokens.shape[1]
    sel = _rows(rows, budget.ce_tokens, context)
    sites = sorted({s.cfg.out_hookpoint or s.cfg.hookpoint for s, _ in saes})
    sums = {"clean": 0.0, "n": 0}
    site_sums = {h: {"zero": 0.0, "mean": 0.0} for h in sites}
    sae_sums = [{"ce": 0.0, "kl": 0.0, "ce_all": 0.0, "kl_all": 0.0} for _ in saes]
    for ids in tqdm(list(_batches(rows, sel, budget.ce_batch_rows, device)), desc="eval: splice / CE", leave=False):
        store: dict[str, torch.Tensor] = {}
        handles = [_record(model, h, store) for h in {h for s, _ in saes for h in (s.cfg.hookpoint, s.cfg.out_hookpoint) if h}]
        try:
            logits = model(input_ids=ids, use_cache=False).logits
        finally:
            for hd in handles:
                hd.remove()
        ce, _, clean_logp = _ce_kl(logits, ids, None)
        del logits
        sums["clean"] += ce
        sums["n"] += ids.shape[0] * (ids.shape[1] - 1)
        masks = {}
        for i, (sae, cfgj) in enumerate(saes):
            c = sae.cfg
            drop = sae_sink_mask(sae, cfgj, store, ids, special)
            masks.setdefault(c.out_hookpoint or c.hookpoint, drop)
            for key, keep in (("", drop), ("_all", None)):
                with spliced(model, sae, keep=keep):
                    ce_s, kl_s, _ = _ce_kl(model(input_ids=ids, use_cache=False).logits, ids, clean_logp)
                sae_sums[i]["ce" + key] += ce_s
                sae_sums[i]["kl" + key] += kl_s
        for h in sites:
            drop = masks[h][..., None]
            for name, value in (("zero", 0.0), ("mean", means[h])):
                fn = (lambda a, v=value, d=drop: torch.where(d, a, torch.zeros_like(a) + v))
                with patch_activation(model, h, fn):
                    ce_a, _, _ = _ce_kl(model(input_ids=ids, use_cache=False).logits, ids, None)
                site_sums[h][name] += ce_a
    n = max(sums["n"], 1)
    clean = sums["clean"] / n
    out = []
    for (sae, _), s in zip(saes, sae_sums):
        h = sae.cfg.out_hookpoint or sae.cfg.hookpoint
        ce, zero, mean = s["ce"] / n, site_sums[h]["zero"] / n, site_sums[h]["mean"] / n
        out.append({
            "kl": s["kl"] / n, "ce_clean": clean, "ce_spliced": ce, "ce_increase": ce - clean,
            "ce_zero_ablation": zero, "ce_mean_ablation": mean,
            "ce_recovered_zero": (zero - ce) / (zero - clean) if zero != clean else float("nan"),
            "ce_recovered_mean": (mean - ce) / (mean - clean) if mean != clean else float("nan"),
            "kl_all_positions": s["kl_all"] / n, "ce_increase_all_positions": s["ce_all"] / n - clean,
            "ce_eval_tokens": n,
        })
    return out


def evaluate(model, tokenizer, saes: list[tuple[SparseCoder, dict]], rows: TokenRows, budget: EvalBudget,
             device: str = "cpu") -> list[dict]:
    """All metrics for each SAE; each result also carries `_freq` (per-latent firing frequency)."""
    recon, means = reconstruction_metrics(model, tokenizer, saes, rows, budget, device)
    if budget.ce_tokens > 0:
        for r, d in zip(recon, downstream_metrics(model, tokenizer, saes, rows, means, budget, device)):
            r.update(d)
    return recon


def density_plot(freq: torch.Tensor, path: Path, title: str, l0_hist: tuple[list, list] | None = None) -> None:
    """Left: histogram of log10 firing frequency per latent (dead latents counted in the title).
    Right (when given): histogram of active latents per token (L0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = freq.numpy()
    n = max(1, int(f.size))
    fig, axes = plt.subplots(1, 2 if l0_hist else 1, figsize=(10 if l0_hist else 6, 3.5), squeeze=False)
    ax = axes[0, 0]
    ax.hist(np.log10(f[f > 0]), bins=50, color="#3b6ea8")
    dead = int((f == 0).sum())
    ax.set_xlabel("log10 firing frequency (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}\n{dead} dead of {n} ({100 * dead / n:.1f}%)", fontsize=9)
    if l0_hist:
        counts, edges = l0_hist
        ax = axes[0, 1]
        ax.stairs(counts, edges, fill=True, color="#a8573b")
        ax.set_xlabel("active latents per token (L0)")
        ax.set_ylabel("tokens")
        ax.set_title("L0 per token", fontsize=9)
    fig.tight_layout()
    write_figure(path, fig)
