"""Metrics of dictionaries on held-out tokens: reconstruction, sparsity, and effect on the model.

Two budgets: reconstruction metrics (FVU, MSE, cosine, L0, dead/dense) use `tokens` held-out
positions through the truncated forward; downstream metrics (KL, CE increase, CE recovered)
need full forwards, one per variant, and use `ce_tokens` positions. Several SAEs evaluated
together share the clean and ablation passes of their hookpoint.

Sinks: reconstruction metrics are over non-sink positions (the ones the SAE was trained on);
downstream metrics are reported twice: with sink positions kept clean (`*`) and with every
position spliced (`*_all_positions`).

Results are typed (results.py: `SaeMetrics`, its `Downstream` part); `measure` also returns each
SAE's per-latent firing frequency, apart from the metrics. Which rows are held out is decided by
whoever opened the rows (`SaeFolder.open_data`: the split the SAE was trained with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import TokenRows
from ..models import collect_activations, first_tensor, module_at, patch_activation
from ..sae import SparseCoder
from ..sae.splice import spliced
from ..sinks import SinkConfig, excluded_positions, special_ids
from .results import DESCRIPTIONS, Downstream, SaeMetrics  # noqa: F401  (DESCRIPTIONS: where callers found it)


@dataclass
class EvalBudget:
    tokens: int = 100_000
    ce_tokens: int = 16_384
    batch_rows: int = 16
    ce_batch_rows: int = 4


@dataclass
class PassStats:
    """What the reconstruction pass measures besides the metrics: each output site's mean activation
    (for mean ablation) and each SAE's per-latent firing frequency on the evaluation tokens."""

    site_means: dict[str, torch.Tensor]
    firing: list[torch.Tensor]
    rows: list[dict[str, np.ndarray]] = field(default_factory=list)  # per SAE, per held-out row (_row_sums)


# Each SAE comes with the sink rule it was trained with: a SinkConfig, or a cfg.json dict to read it from.
Sinked = tuple[SparseCoder, "SinkConfig | dict"]


def sink_config_of(cfg_json: dict) -> SinkConfig:
    s = cfg_json.get("saelab", {}).get("sink")
    return SinkConfig(**s) if s else SinkConfig()


def _sink(x: SinkConfig | dict) -> SinkConfig:
    return x if isinstance(x, SinkConfig) else sink_config_of(x)


def sae_sink_mask(
    sae: SparseCoder, sink: SinkConfig | dict, acts: dict[str, torch.Tensor], ids: torch.Tensor, special: list[int]
) -> torch.Tensor:
    """Bool [batch, seq]: sink/outlier positions at this SAE's site(s), by the rule it was trained with."""
    c = sae.cfg
    sites = [acts[c.hookpoint]] + ([acts[c.out_hookpoint]] if c.out_hookpoint else [])
    return excluded_positions(sites, ids, _sink(sink), special)


def heldout_selection(rows: TokenRows, tokens: int) -> np.ndarray:
    """Held-out rows covering `tokens` positions (at least one row), spread evenly over the held-out
    split. The split is in corpus order (the built-in corpus is pydoc prose, then stdlib files sorted
    by path), so its first rows are not a sample of it: the first 79 rows gave the 1M-token layer-6 SAE
    FVU 0.114, the first 430 rows 0.093 (issue 30). Every n-th row is a systematic sample across the
    whole corpus, the same rows for every run."""
    held = rows.heldout_rows
    n = min(len(held), max(1, math.ceil(tokens / rows.tokens.shape[1])))
    return held[(np.arange(n) * len(held)) // n]


def say_short_budget(rows: TokenRows, budget: EvalBudget) -> None:
    """One line on stderr when --tokens / --ce-tokens ask for more held-out tokens than the split has:
    `eval --tokens 1000000000000` measured on the 5,670 there are and said nothing."""
    import sys

    have = len(rows.heldout_rows) * rows.tokens.shape[1]
    for name, want in (("--tokens", budget.tokens), ("--ce-tokens", budget.ce_tokens)):
        if want > have:
            print(
                f"saelab: {name} {want:,}: the held-out split has {have:,} tokens; measuring on those "
                f"(a larger corpus or --heldout-fraction at training gives more)",
                file=sys.stderr,
            )


def batches(rows: TokenRows, sel: np.ndarray, batch_rows: int, device: str):
    for i in range(0, len(sel), batch_rows):
        yield torch.from_numpy(np.asarray(rows.tokens[sel[i : i + batch_rows]], dtype=np.int64)).to(device)


def _out_site(sae: SparseCoder) -> str:
    return sae.cfg.out_hookpoint or sae.cfg.hookpoint


def _hooks(saes: list[Sinked]) -> list[str]:
    return sorted({h for s, _ in saes for h in (s.cfg.hookpoint, s.cfg.out_hookpoint) if h})


@torch.no_grad()
def reconstruction_metrics(
    model, tokenizer, saes: list[Sinked], rows: TokenRows, budget: EvalBudget, device: str = "cpu"
) -> tuple[list[SaeMetrics], PassStats]:
    """Per-SAE reconstruction/sparsity metrics over `budget.tokens` held-out non-sink positions."""
    hooks = _hooks(saes)
    special = special_ids(tokenizer)
    acc = [
        dict(
            err=0.0,
            n=0,
            elems=0,
            cos=0.0,
            yh_sq=0.0,
            yh_y=0.0,
            sum_yh=0.0,
            sum_y=0.0,
            sumsq_y=0.0,
            l0=[],
            rows=[],
            excluded=0,
            total=0,
            fires=torch.zeros(s.cfg.d_sae, device=device),
        )
        for s, _ in saes
    ]
    site_sum: dict[str, torch.Tensor] = {}
    site_n: dict[str, int] = {}
    sel = heldout_selection(rows, budget.tokens)
    for ids in tqdm(list(batches(rows, sel, budget.batch_rows, device)), desc="eval: reconstruction", leave=False):
        acts = collect_activations(model, ids, hooks)
        site_keep: dict[str, torch.Tensor] = {}
        for (sae, sink), a in zip(saes, acc):
            c = sae.cfg
            drop = sae_sink_mask(sae, sink, acts, ids, special)
            keep = ~drop
            x = acts[c.hookpoint][keep].float()
            y = acts[_out_site(sae)][keep].float()
            lat = sae.encode_raw(x)
            y_hat = sae.decode(lat) / sae.out_scale + sae.skip_raw(x)
            a["err"] += (y_hat - y).pow(2).sum().item()
            a["yh_sq"] += y_hat.pow(2).sum().item()
            a["yh_y"] += (y_hat * y).sum().item()
            a["sum_yh"] = a["sum_yh"] + y_hat.double().sum(0)
            a["sum_y"] = a["sum_y"] + y.sum(0)
            a["sumsq_y"] += y.pow(2).sum().item()
            a["n"] += y.shape[0]
            a["elems"] += y.numel()
            cos = F.cosine_similarity(y_hat, y, dim=-1)
            a["cos"] += cos.sum().item()
            a["rows"].append(_row_sums(keep, (y_hat - y).pow(2).sum(-1), cos, y))
            a["l0"].append(lat.l0_per_row())
            a["fires"] += lat.fire_counts().float()
            a["excluded"] += int(drop.sum())
            a["total"] += drop.numel()
            site_keep.setdefault(_out_site(sae), keep)
        for h, keep in site_keep.items():
            v = acts[h][keep].float()
            site_sum[h] = site_sum.get(h, 0) + v.sum(0)
            site_n[h] = site_n.get(h, 0) + v.shape[0]
    results, firing = [], []
    for a in acc:
        n = max(a["n"], 1)
        mean = a["sum_y"] / n
        var_sum = a["sumsq_y"] - n * (mean.pow(2).sum().item() if torch.is_tensor(mean) else 0.0)
        l0 = torch.cat(a["l0"]).float().cpu()
        freq = (a["fires"] / n).cpu()
        counts, edges = np.histogram(l0.numpy(), bins=20)
        results.append(
            SaeMetrics(
                fvu=a["err"] / max(var_sum, 1e-12),
                mse=a["err"] / max(a["elems"], 1),
                cosine=a["cos"] / n,
                l0=l0.mean().item(),
                dead_fraction=(freq == 0).float().mean().item(),
                dense_fraction=(freq > 0.1).float().mean().item(),
                excluded_fraction=a["excluded"] / max(a["total"], 1),
                eval_tokens=n,
                l0_histogram=counts.tolist(),
                l0_histogram_edges=edges.tolist(),
                relative_reconstruction_bias=_relative_bias(a, n),
            )
        )
        firing.append(freq)
    per_row = [_row_arrays(a["rows"], a["sum_y"] / max(a["n"], 1)) for a in acc]
    return results, PassStats({h: site_sum[h] / site_n[h] for h in site_sum}, firing, per_row)


def _row_sums(keep: torch.Tensor, err: torch.Tensor, cos: torch.Tensor, y: torch.Tensor) -> dict:
    """Per row of the batch (keep: [b, T]; the rest over its kept positions): summed squared error, cosine,
    count, |y|^2 and y, from which a bootstrap over rows recomputes FVU and cosine (bench/core.py)."""
    r = keep.nonzero(as_tuple=True)[0]
    z = lambda *shape: torch.zeros(keep.shape[0], *shape, dtype=torch.float64, device=y.device)  # noqa: E731
    return {
        "err": z().index_add_(0, r, err.double()),
        "cos": z().index_add_(0, r, cos.double()),
        "n": z().index_add_(0, r, torch.ones_like(err, dtype=torch.float64)),
        "sumsq": z().index_add_(0, r, y.double().pow(2).sum(-1)),
        "sum_y": z(y.shape[-1]).index_add_(0, r, y.double()),
    }


def _row_arrays(parts: list[dict], mean: torch.Tensor) -> dict[str, np.ndarray]:
    """[rows] arrays: err, var (sum over the row of |y - global mean|^2: their total is FVU's denominator),
    cos (summed) and n."""
    if not parts:
        return {k: np.zeros(0) for k in ("err", "var", "cos", "n")}
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    m = mean.double().to(cat["sum_y"].device) if torch.is_tensor(mean) else torch.zeros(cat["sum_y"].shape[1])
    var = cat["sumsq"] - 2 * cat["sum_y"] @ m + cat["n"] * m.pow(2).sum()
    return {k: v.cpu().numpy() for k, v in (("err", cat["err"]), ("var", var), ("cos", cat["cos"]), ("n", cat["n"]))}


def _relative_bias(a: dict, n: int) -> float | None:
    """gamma = sum ||x_hat - mean x_hat||^2 / sum <x_hat - mean x_hat, x - mean x> from running sums.
    The paper's gamma (Rajamanoharan et al. 2024) uses raw vectors; on a residual stream whose mean is
    large (the dictionary's b_dec carries it) that is ~1 for every dictionary (0.994-1.001 for TopK,
    JumpReLU and gated at layer 6), so both sides are centred: gamma < 1 is the latents' part shrunk."""
    if not torch.is_tensor(a["sum_yh"]):
        return None
    m_hat, m = a["sum_yh"] / n, a["sum_y"].double() / n
    cov = a["yh_y"] - n * float(m_hat @ m)
    return (a["yh_sq"] - n * float(m_hat @ m_hat)) / cov if cov else None


def _ce_kl(logits: torch.Tensor, ids: torch.Tensor, clean_logp: torch.Tensor | None, rows: dict | None = None):
    """Summed next-token CE over positions 0..T-2, and summed KL to the clean distribution. `rows`, when
    given, receives the same sums per row of the batch ("ce", "kl": [b] float64; the totals are reduced as
    before, so `saelab eval`'s numbers do not move when the bench asks for rows)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    tok = -logp.gather(-1, ids[:, 1:, None])  # [b, T-1, 1]
    ce = tok.sum().item()
    kl = 0.0
    if clean_logp is not None:
        kl = F.kl_div(logp, clean_logp, log_target=True, reduction="sum").item()
    if rows is not None:
        rows["ce"] = tok[..., 0].double().sum(-1).cpu().numpy()
        if clean_logp is not None:
            per = F.kl_div(logp, clean_logp, log_target=True, reduction="none").sum(-1)  # [b, T-1]
            rows["kl"] = per.double().sum(-1).cpu().numpy()
    return ce, kl, logp


def _record(model, hookpoint: str, store: dict):
    mod = module_at(model, hookpoint)
    if hookpoint.endswith(":input"):
        return mod.register_forward_pre_hook(lambda m, args: store.__setitem__(hookpoint, args[0]))
    return mod.register_forward_hook(lambda m, a, out: store.__setitem__(hookpoint, first_tensor(out)))


@torch.no_grad()
def downstream_metrics(
    model,
    tokenizer,
    saes: list[Sinked],
    rows: TokenRows,
    means: dict[str, torch.Tensor],
    budget: EvalBudget,
    device: str = "cpu",
    per_row: list | None = None,
) -> list[Downstream]:
    """Per SAE: KL / CE with it spliced in, against zero- and mean-ablation of its output site. `per_row`,
    when given, receives per SAE the per-row sums behind them (`_ce_rows`: the bench's bootstrap over rows)."""
    special = special_ids(tokenizer)
    rec: dict | None = None if per_row is None else {}

    def part(key):  # what _ce_kl fills with this batch's per-row sums under `key` (None: not asked)
        if rec is None:
            return None
        rec.setdefault(key, []).append({})
        return rec[key][-1]

    sel = heldout_selection(rows, budget.ce_tokens)
    sites = sorted({_out_site(s) for s, _ in saes})
    clean_sum, n_pred = 0.0, 0
    site_sums = {h: {"zero": 0.0, "mean": 0.0} for h in sites}
    sae_sums = [{"ce": 0.0, "kl": 0.0, "ce_all": 0.0, "kl_all": 0.0} for _ in saes]
    for ids in tqdm(list(batches(rows, sel, budget.ce_batch_rows, device)), desc="eval: splice / CE", leave=False):
        store: dict[str, torch.Tensor] = {}
        handles = [_record(model, h, store) for h in _hooks(saes)]
        try:
            logits = model(input_ids=ids, use_cache=False).logits
        finally:
            for hd in handles:
                hd.remove()
        ce, _, clean_logp = _ce_kl(logits, ids, None, part("clean"))
        del logits
        clean_sum += ce
        n_pred += ids.shape[0] * (ids.shape[1] - 1)
        masks = {}
        for i, ((sae, sink), s) in enumerate(zip(saes, sae_sums)):
            drop = sae_sink_mask(sae, sink, store, ids, special)
            masks.setdefault(_out_site(sae), drop)
            for key, keep in (("", drop), ("_all", None)):
                with spliced(model, sae, keep=keep):
                    ce_s, kl_s, _ = _ce_kl(
                        model(input_ids=ids, use_cache=False).logits, ids, clean_logp, None if key else part(i)
                    )
                s["ce" + key] += ce_s
                s["kl" + key] += kl_s
        for h in sites:
            drop = masks[h][..., None]
            for name, value in (("zero", 0.0), ("mean", means[h])):
                fn = lambda a, v=value, d=drop: torch.where(d, a, (torch.zeros_like(a) + v).to(a.dtype))
                with patch_activation(model, h, fn):
                    ce_a, _, _ = _ce_kl(model(input_ids=ids, use_cache=False).logits, ids, None, part((h, name)))
                site_sums[h][name] += ce_a
    n = max(n_pred, 1)
    clean = clean_sum / n
    out = []
    for (sae, _), s in zip(saes, sae_sums):
        h = _out_site(sae)
        ce, zero, mean = s["ce"] / n, site_sums[h]["zero"] / n, site_sums[h]["mean"] / n
        out.append(
            Downstream(
                kl=s["kl"] / n,
                ce_clean=clean,
                ce_spliced=ce,
                ce_increase=ce - clean,
                ce_zero_ablation=zero,
                ce_mean_ablation=mean,
                ce_recovered_zero=(zero - ce) / (zero - clean) if zero != clean else float("nan"),
                ce_recovered_mean=(mean - ce) / (mean - clean) if mean != clean else float("nan"),
                kl_all_positions=s["kl_all"] / n,
                ce_increase_all_positions=s["ce_all"] / n - clean,
                ce_eval_tokens=n,
            )
        )
    if rec is not None:
        per_row.extend(_ce_rows(rec, [_out_site(s) for s, _ in saes], sel, rows.tokens.shape[1] - 1))
    return out


def _ce_rows(rec: dict, sites: list[str], sel, predicted: int) -> list[dict[str, np.ndarray]]:
    """Per SAE, [rows] arrays of the CE pass's rows: summed CE of the clean model, with the SAE spliced
    (sinks kept clean), with its output site zero- and mean-ablated, KL to clean, and predictions n. Each
    downstream number is a ratio of their totals (CE recovered = sum(zero - sae) / sum(zero - clean))."""
    cat = lambda key, f="ce": np.concatenate([d[f] for d in rec[key]]) if key in rec else np.zeros(0)  # noqa: E731
    out = []
    for i, h in enumerate(sites):
        clean = cat("clean")
        out.append(
            {
                "ce_clean": clean,
                "ce_sae": cat(i),
                "kl": cat(i, "kl"),
                "ce_zero": cat((h, "zero")),
                "ce_mean": cat((h, "mean")),
                "n_pred": np.full(len(clean), float(predicted)),
            }
        )
    return out


def measure(
    model,
    tokenizer,
    saes: list[Sinked],
    rows: TokenRows,
    budget: EvalBudget,
    device: str = "cpu",
    per_row: list | None = None,
) -> tuple[list[SaeMetrics], list[torch.Tensor]]:
    """All metrics of each SAE (downstream ones when `budget.ce_tokens` > 0), and each SAE's per-latent
    firing frequency [d_sae] on the reconstruction tokens; `per_row`, when given, receives each SAE's
    per-row sums (PassStats.rows, plus the CE pass's `_ce_rows` under their own keys: the bench's
    bootstrap over rows)."""
    results, stats = reconstruction_metrics(model, tokenizer, saes, rows, budget, device)
    if per_row is not None:
        per_row.extend(stats.rows)
    if budget.ce_tokens > 0:
        ce_rows: list | None = None if per_row is None else []
        down = downstream_metrics(model, tokenizer, saes, rows, stats.site_means, budget, device, ce_rows)
        for r, d in zip(results, down):
            r.downstream = d
        for p, c in zip(per_row or [], ce_rows or []):
            p.update(c)
    return results, stats.firing


def evaluate(
    model, tokenizer, saes: list[Sinked], rows: TokenRows, budget: EvalBudget, device: str = "cpu"
) -> list[SaeMetrics]:
    """`measure` without the firing frequencies."""
    return measure(model, tokenizer, saes, rows, budget, device)[0]
