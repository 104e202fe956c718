"""`saelab eval REPLACEMENT_FOLDER`: how well a replacement model (sae/replacement.py) stands in for the model.

Per layer (over `tokens` held-out positions, clean forward): FVU of the MLP output and L0. A PLT set
goes through `reconstruction_metrics`, the pass `saelab eval` runs for one dictionary (so a layer's
FVU is the one its own folder's metrics.json reports); a CLT's layer l output is the sum of the
decoders of layers <= l into l, each layer encoded from its clean MLP input.

Every layer replaced at once (over `ce_tokens`, full forwards, `replaced`): KL to the clean next-token
distribution, CE increase, top-1 next-token agreement with the clean model per token and on the last
token of each row (the replacement score of Ameisen et al. 2025); positions that are sinks / outliers
at any layer's sites (the rule the dictionaries trained with) stay clean, as `saelab eval` does for
one dictionary; the `*_all_positions` values splice every position. `error_terms_max_abs_logit_diff`
is the check that the splice with error terms is the clean model (it must be ~0).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import collect_activations
from ..sae.folder import open_shared_data
from ..sae.replacement import Replacement, open_replacement, replaced
from ..sinks import excluded_positions, special_ids
from ..storage import write_figure, write_json
from .metrics import EvalBudget, _ce_kl, _record, batches, heldout_selection, reconstruction_metrics

METRICS = "replacement_metrics.json"
PLOT = "replacement_layers.png"


def evaluate_replacement(cfg, quiet: bool = False) -> dict:
    """Measure the replacement folder `cfg.sae_dirs[0]` (an EvalConfig); write replacement_metrics.json
    (in the folder, or `cfg.out`) and the per-layer plot beside it; print a table unless `quiet`."""
    if len(cfg.sae_dirs) != 1:
        raise UserError("evaluate a replacement folder on its own (one folder per `saelab eval`)")
    rep = open_replacement(Path(cfg.sae_dirs[0]), cfg.device)
    target = Path(cfg.out) if cfg.out else rep.path / METRICS
    if target.exists() and not cfg.overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")
    data = open_shared_data(rep.folders, cfg.device, cfg.model, cfg.corpus, dtype=cfg.dtype)
    lm, rows = data.lm, data.rows
    budget = EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens)
    t0 = time.time()
    layers = layer_metrics(lm.model, lm.tokenizer, rep, rows, budget, cfg.device)
    out = {"layers": layers}
    if budget.ce_tokens > 0:
        out |= spliced_metrics(lm.model, lm.tokenizer, rep, rows, budget, cfg.device)
    png = target.with_name(target.stem.removesuffix("_metrics") + "_layers.png") if cfg.out else rep.path / PLOT
    layer_plot(layers, png, f"{rep.path.name}: {rep.kind.upper()} of {len(rep.layers)} layers")
    record = {
        "replacement": str(rep.path),
        "kind": rep.kind,
        "model": data.provenance.model_spec,
        "corpus": data.provenance.corpus,
        "data_fingerprint": rows.fingerprint,
        "data_matches_training": data.matches[0],
        "split": "heldout",
        "wall_s": time.time() - t0,
        "plot": png.name,
        "metrics": out,
    }
    write_json(target, record)
    if not quiet:
        print(replacement_table(rep, out, target))
    return record


@torch.no_grad()
def layer_metrics(model, tokenizer, rep: Replacement, rows, budget: EvalBudget, device: str = "cpu") -> list[dict]:
    """Per layer: {layer, fvu, l0, cosine, eval_tokens} of its MLP output on clean inputs."""
    if rep.kind == "plt":
        saes = [(f.sae, f.provenance.sink) for f in rep.folders]
        results, _ = reconstruction_metrics(model, tokenizer, saes, rows, budget, device)
        return [
            {"layer": x, "fvu": m.fvu, "l0": m.l0, "cosine": m.cosine, "eval_tokens": m.eval_tokens}
            for x, m in zip(rep.layers, results)
        ]
    return _clt_layer_metrics(model, tokenizer, rep, rows, budget, device)


def _clt_layer_metrics(model, tokenizer, rep: Replacement, rows, budget: EvalBudget, device: str) -> list[dict]:
    clt, sink, special = rep.dictionaries[0], rep.provenance.sink, special_ids(tokenizer)
    ins, outs, n_layers = rep.input_sites, rep.output_sites, len(rep.layers)
    err, sq, cos, l0 = (torch.zeros(n_layers, dtype=torch.float64) for _ in range(4))
    s1 = [0.0] * n_layers
    n = 0
    for ids in tqdm(
        list(batches(rows, heldout_selection(rows, budget.tokens), budget.batch_rows, device)),
        desc="eval: replacement layers",
        leave=False,
    ):
        acts = collect_activations(model, ids, ins + outs)
        keep = ~excluded_positions([acts[h] for h in ins + outs], ids, sink, special)
        lats = [clt.encode_layer(i, acts[h][keep].float()) for i, h in enumerate(ins)]
        for t, h in enumerate(outs):
            y = acts[h][keep].float()
            y_hat = clt.output_bias(t) + sum(clt.decode_layer(s, lats[s], t) for s in range(t + 1))
            err[t] += (y_hat - y).pow(2).sum().item()
            sq[t] += y.pow(2).sum().item()
            s1[t] = s1[t] + y.sum(0).double()
            cos[t] += F.cosine_similarity(y_hat, y, dim=-1).sum().item()
            l0[t] += lats[t].l0_per_row().sum().item()
        n += int(keep.sum())
    n = max(n, 1)
    var = [sq[t] - (s1[t].pow(2).sum() / n if torch.is_tensor(s1[t]) else 0.0) for t in range(n_layers)]
    return [
        {
            "layer": x,
            "fvu": float(err[t] / max(float(var[t]), 1e-12)),
            "l0": float(l0[t] / n),
            "cosine": float(cos[t] / n),
            "eval_tokens": n,
        }
        for t, x in enumerate(rep.layers)
    ]


@torch.no_grad()
def spliced_metrics(model, tokenizer, rep: Replacement, rows, budget: EvalBudget, device: str = "cpu") -> dict:
    """Every layer replaced at once against the clean model: KL, CE, top-1 agreement (per token, last token)."""
    sink, special = rep.provenance.sink, special_ids(tokenizer)
    sites = list(dict.fromkeys(rep.input_sites + rep.output_sites))
    s = dict(ce_clean=0.0, ce=0.0, kl=0.0, ce_all=0.0, kl_all=0.0, agree=0, agree_last=0, err_max=0.0)
    n_pred = n_rows = 0
    for ids in tqdm(
        list(batches(rows, heldout_selection(rows, budget.ce_tokens), budget.ce_batch_rows, device)),
        desc="eval: replacement splice / CE",
        leave=False,
    ):
        store: dict[str, torch.Tensor] = {}
        handles = [_record(model, h, store) for h in sites]
        try:
            clean_logits = model(input_ids=ids, use_cache=False).logits
        finally:
            for hd in handles:
                hd.remove()
        ce, _, clean_logp = _ce_kl(clean_logits, ids, None)
        top = clean_logits.argmax(-1)  # [batch, seq]
        drop = excluded_positions([store[h] for h in sites], ids, sink, special)
        with replaced(model, rep, keep=drop):
            logits = model(input_ids=ids, use_cache=False).logits
        ce_s, kl_s, _ = _ce_kl(logits, ids, clean_logp)
        same = logits.argmax(-1) == top
        with replaced(model, rep):
            ce_a, kl_a, _ = _ce_kl(model(input_ids=ids, use_cache=False).logits, ids, clean_logp)
        with replaced(model, rep, error_terms=True):
            diff = (model(input_ids=ids, use_cache=False).logits.float() - clean_logits.float()).abs().max().item()
        s["ce_clean"] += ce
        s["ce"] += ce_s
        s["kl"] += kl_s
        s["ce_all"] += ce_a
        s["kl_all"] += kl_a
        s["agree"] += int(same[:, :-1].sum())
        s["agree_last"] += int(same[:, -1].sum())
        s["err_max"] = max(s["err_max"], diff)
        n_pred += ids.shape[0] * (ids.shape[1] - 1)
        n_rows += ids.shape[0]
    n = max(n_pred, 1)
    return {
        "kl": s["kl"] / n,
        "ce_clean": s["ce_clean"] / n,
        "ce_spliced": s["ce"] / n,
        "ce_increase": (s["ce"] - s["ce_clean"]) / n,
        "top1_agreement": s["agree"] / n,
        "replacement_score": s["agree_last"] / max(n_rows, 1),
        "kl_all_positions": s["kl_all"] / n,
        "ce_increase_all_positions": (s["ce_all"] - s["ce_clean"]) / n,
        "error_terms_max_abs_logit_diff": s["err_max"],
        "ce_eval_tokens": n,
        "ce_eval_rows": n_rows,
    }


def layer_plot(layers: list[dict], path: Path, title: str) -> None:
    """FVU (left) and L0 (right) of each layer's MLP output, as bars by layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["layer"] for r in layers]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, label, color in (
        (axes[0], "fvu", "FVU of the MLP output", "#3b6ea8"),
        (axes[1], "l0", "L0", "#a8573b"),
    ):
        ax.bar(xs, [r[key] for r in layers], color=color)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    write_figure(path, fig)


def replacement_table(rep: Replacement, m: dict, target: Path) -> str:
    """What `saelab eval` prints for a replacement folder: one line per layer, then the all-spliced values."""
    lines = [f"{rep.path.name}: {rep.kind} replacement of {len(rep.layers)} layers", "  layer     FVU      L0"]
    lines += [f"  {r['layer']:>5}  {r['fvu']:.4f}  {r['l0']:6.1f}" for r in m["layers"]]
    if "kl" in m:
        lines.append(
            f"  all spliced: KL {m['kl']:.4f}, CE increase {m['ce_increase']:+.4f} (clean {m['ce_clean']:.4f}), "
            f"top-1 agreement {m['top1_agreement']:.3f}, replacement score (last token) {m['replacement_score']:.3f}"
        )
        lines.append(
            f"  every position spliced: KL {m['kl_all_positions']:.4f}; with error terms: max |logit diff| "
            f"{m['error_terms_max_abs_logit_diff']:.2g}"
        )
    return "\n".join(lines + [f"  -> {target}"])
