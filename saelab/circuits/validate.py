"""Does a graph's story survive an intervention? (`saelab attribute --validate N`)

For each prompt: its attribution graph (attribution.py), the features with the most influence on its top
logit (prune.node_influence with all the weight on that target), and for each of them two numbers:

- predicted: what the graph says ablating it does to the target's input (the demeaned logit). The graph is
  linear per unit of activation (an edge s -> g is a_s x (s's write . g's gradient), so edge / a_s per unit):
  the ablated feature moves by -a_f, each downstream feature node g moves by the change of its input,
  sum_s edge(s -> g) / a_s x change_s (an active feature's activation follows its pre-activation), and the
  target by sum_s edge(s -> target) / a_s x change_s. Feature-to-feature edges only run from earlier layers
  to later ones, so the series change = d + M d + M^2 d + ... ends after at most n_layers terms.
- measured: the same ablation in the replacement model with its errors frozen (interventions.py), where
  attention patterns, norm denominators and which features fire are live again.

Pearson and Spearman correlations of the two, over every (prompt, feature) and per prompt; a correlation under
`threshold` (0.5) flags the graphs: their predictions do not hold, so they are not to be read as the mechanism.
Written as validation.json and a predicted-vs-measured scatter plot (validation.png).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..features.steer import prompt_ids
from ..models import LoadedModel
from ..storage import write_figure, write_json
from .attribution import attribute
from .interventions import Edit, intervene
from .prune import graph_scores, node_influence

THRESHOLD = 0.5
JSON, PLOT = "validation.json", "validation.png"
FLAG = "the graph's predictions do not hold"


@dataclass
class ValidationReport:
    """Predicted vs measured ablation effects on the top logit of each prompt's graph."""

    prompts: list[dict]  # per prompt: prompt, target, pearson, spearman, flagged, features [{..., predicted, measured}]
    pearson: float  # over every (prompt, feature) point
    spearman: float
    threshold: float = THRESHOLD
    meta: dict = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        """True when the overall correlation is under the threshold (or undefined)."""
        return not self.pearson >= self.threshold

    @property
    def predicted(self) -> np.ndarray:
        return np.array([f["predicted"] for p in self.prompts for f in p["features"]])

    @property
    def measured(self) -> np.ndarray:
        return np.array([f["measured"] for p in self.prompts for f in p["features"]])

    def message(self) -> str:
        n = len(self.predicted)
        head = (
            f"graph vs ablation over {len(self.prompts)} prompt(s), {n} features: "
            f"Pearson {self.pearson:.3f}, Spearman {self.spearman:.3f}"
        )
        scores = self.mean_scores()
        if scores:
            head += "; mean replacement score {:.3f}, completeness {:.3f}".format(
                *(scores.get(k, {}).get("mean") or float("nan") for k in ("replacement_score", "completeness_score"))
            )
        bad = [i for i, p in enumerate(self.prompts) if p["flagged"]]
        if self.flagged:
            return f"{head}; FLAGGED: {FLAG} (correlation < {self.threshold})"
        return head + (f"; {len(bad)} prompt(s) flagged individually" if bad else "")

    def mean_scores(self) -> dict:
        """The prompts' replacement and completeness scores: mean, min and max of each."""
        out = {}
        for key in ("replacement_score", "completeness_score"):
            v = [p[key] for p in self.prompts if p.get(key) is not None]
            if v:
                out[key] = {"mean": _num(float(np.mean(v))), "min": _num(min(v)), "max": _num(max(v))}
        return out

    def to_json(self) -> dict:
        return {
            "format": "saelab-validation",
            "version": 1,
            "pearson": _num(self.pearson),
            "spearman": _num(self.spearman),
            "threshold": self.threshold,
            "flagged": self.flagged,
            "message": self.message(),
            "graph_scores": self.mean_scores(),
            "meta": self.meta,
            "prompts": self.prompts,
        }

    def write(self, out) -> tuple[Path, Path]:
        """OUT/validation.json and OUT/validation.png (the scatter plot), each written atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        scatter_plot(self, out / PLOT)
        write_json(out / JSON, self.to_json() | {"plot": PLOT})
        return out / JSON, out / PLOT


def predicted_ablation_effects(graph, target: int, nodes: torch.Tensor) -> torch.Tensor:
    """[len(nodes)] the graph's linear prediction of the change of target `target`'s input (target index
    0..n_targets-1) when each feature node in `nodes` (indices < n_sel) is ablated (see the module docstring)."""
    n = graph.n_sel
    a = graph.feature_activations().double()
    if (a == 0).any():
        raise UserError("the graph has a feature node of activation 0: its per-unit edges are undefined")
    adj = graph.adjacency.double()
    per_unit = adj[:n, :n] / a  # [g, s]: input change of g per unit change of s
    to_target = adj[graph.target_index(target), :n] / a  # [s]
    change = torch.zeros(n, len(nodes), dtype=torch.float64)
    change[nodes, torch.arange(len(nodes))] = -a[nodes]
    total, term = change.clone(), change
    for _ in range(graph.n_layers + 1):  # nilpotent: at most n_layers - 1 feature-to-feature steps
        term = per_unit @ term
        if not term.any():
            break
        total += term
    else:
        raise UserError("the graph's feature edges do not end (a cycle): it is not an attribution graph")
    return (to_target @ total).float()


def validate(
    model,
    replacement,
    prompts,
    n_features: int = 10,
    tokenizer=None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 256,
    zero_positions: int = 1,
    threshold: float = THRESHOLD,
    out=None,
    progress: bool = False,
) -> ValidationReport:
    """Compare predicted and measured ablation effects over the `n_features` most influential features of
    each prompt's graph. `prompts`: texts (tokenised with `tokenizer`, or the LoadedModel's, BOS first) or
    token id tensors [n_pos]; `out`: a folder for validation.json + validation.png."""
    net = model.model if isinstance(model, LoadedModel) else model
    tok = tokenizer or (model.tokenizer if isinstance(model, LoadedModel) else None)
    if n_features < 1:
        raise UserError(f"validation needs at least one feature per prompt, not {n_features}")
    ids = [_tokens(p, tok) for p in prompts]
    if not ids:
        raise UserError("validation needs at least one prompt")
    short = [i for i, t in enumerate(ids) if len(t) <= zero_positions]
    if short:
        raise UserError(f"prompt {short[0]} has {len(ids[short[0]])} token(s), none after the {zero_positions} zeroed")
    t0, rows = time.time(), []
    for i, (p, t) in enumerate(zip(prompts, ids)):
        graph = attribute(
            net,
            replacement,
            t,
            max_n_logits=max_n_logits,
            desired_logit_prob=desired_logit_prob,
            max_feature_nodes=max_feature_nodes,
            batch_size=batch_size,
            zero_positions=zero_positions,
            progress=False,
            tokenizer=tok,
        )
        row = _validate_graph(net, replacement, graph, p if isinstance(p, str) else "", n_features, threshold)
        if tok is not None:
            row["target"] = tok.decode([row["target_token"]])
        rows.append(row)
        if progress:
            r = rows[-1]
            print(f"validate: prompt {i + 1}/{len(ids)}: Pearson {r['pearson']}, Spearman {r['spearman']}", flush=True)
    pred = np.array([f["predicted"] for r in rows for f in r["features"]])
    meas = np.array([f["measured"] for r in rows for f in r["features"]])
    meta = {"replacement": str(replacement.path), "kind": replacement.kind, "n_features": n_features}
    meta |= {"zero_positions": zero_positions, "max_feature_nodes": max_feature_nodes, "seconds": time.time() - t0}
    report = ValidationReport(rows, pearson(pred, meas), spearman(pred, meas), threshold, meta)
    if out is not None:
        report.write(out)
    return report


def _validate_graph(net, replacement, graph, prompt: str, n_features: int, threshold: float) -> dict:
    """One prompt's row: its top target, its top-influence features, predicted and measured effects."""
    t = int(torch.argmax(graph.target_weights))
    token = int(graph.target_tokens[t])
    if token < 0:
        raise UserError("validation measures logit targets; this graph's top target is a custom one")
    weights = torch.zeros(graph.n_nodes)
    weights[graph.target_index(t)] = 1.0
    influence = node_influence(graph.adjacency, weights)[: graph.n_sel]
    k = min(n_features, int((influence > 0).sum()))
    nodes = torch.argsort(influence, descending=True)[:k]
    predicted = predicted_ablation_effects(graph, t, nodes)
    feats = []
    for node, pred in zip(nodes.tolist(), predicted.tolist()):
        layer, pos, fid = graph.feature(node)
        res = intervene(net, replacement, graph.tokens, [Edit(layer, pos, fid, "ablate")], targets=[token])
        feats.append(
            {
                "layer": layer,
                "position": pos,
                "feature": fid,
                "activation": float(graph.feature_activations()[node]),
                "influence": float(influence[node]),
                "predicted": pred,
                "measured": float(res.target_input_change[0]),
            }
        )
    p = np.array([f["predicted"] for f in feats])
    m = np.array([f["measured"] for f in feats])
    r, rho = pearson(p, m), spearman(p, m)
    replacement_score, completeness_score = graph_scores(graph)
    return {
        "replacement_score": _num(replacement_score),
        "completeness_score": _num(completeness_score),
        "prompt": prompt or graph.prompt,
        "tokens": graph.tokens.tolist(),
        "target": graph.target_labels[t],
        "target_token": token,
        "pearson": _num(r),
        "spearman": _num(rho),
        "flagged": not r >= threshold,
        "features": feats,
    }


# ------------------------------------------------------------ correlations


def pearson(x, y) -> float:
    """Pearson's r; nan when fewer than two points or either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties get their average rank)."""
    return pearson(_ranks(x), _ranks(y))


def _ranks(x) -> np.ndarray:
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def _num(v: float):
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


# ------------------------------------------------------------ inputs and plot


def _tokens(p, tok) -> torch.Tensor:
    if isinstance(p, str):
        if tok is None:
            raise UserError("text prompts need a tokenizer (pass a LoadedModel or tokenizer=)")
        return torch.tensor(prompt_ids(tok, p), dtype=torch.long)
    return torch.as_tensor(p, dtype=torch.long).reshape(-1)


def scatter_plot(report: ValidationReport, path: Path) -> None:
    """Predicted (x) against measured (y) change of the top logit, one colour per prompt, with y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, row in enumerate(report.prompts):
        x = [f["predicted"] for f in row["features"]]
        y = [f["measured"] for f in row["features"]]
        ax.scatter(x, y, s=14, color=cmap(i % 10), alpha=0.8)
    both = np.concatenate([report.predicted, report.measured]) if len(report.predicted) else np.zeros(1)
    lo, hi = float(both.min()), float(both.max())
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=0.8, ls="--")
    ax.axhline(0, color="#cccccc", lw=0.5)
    ax.axvline(0, color="#cccccc", lw=0.5)
    ax.set_xlabel("predicted change of the top logit, demeaned (graph, linear)")
    ax.set_ylabel("measured change (ablation, replacement model)")
    title = f"{len(report.prompts)} prompts, {len(report.predicted)} features: Pearson {report.pearson:.2f}, "
    title += f"Spearman {report.spearman:.2f}"
    if report.flagged:
        title += f"\nFLAGGED: {FLAG}"
    ax.set_title(title, fontsize=9, color="#a8573b" if report.flagged else "black")
    fig.tight_layout()
    write_figure(path, fig)


# ------------------------------------------------------------ `saelab attribute --validate N`

PROMPT_TOKENS = 16  # tokens of each corpus prompt (BOS included): short enough for 20 graphs on a laptop CPU
STRIDE = 37  # coprime to the pool: a fixed order that mixes prose and code from the first prompts on


def corpus_prompts(tokenizer, n: int, n_tokens: int = PROMPT_TOKENS, pool: int = 400) -> list[str]:
    """`n` prompts from the built-in corpus, deterministic and nested (the first n of any larger request),
    alternating prose (pydoc topics) and code (the standard library's source): the first `pool` documents
    visited in a fixed scattered order, each giving a window of n_tokens - 1 tokens (BOS makes n_tokens)
    from a line a third of the way in."""
    from itertools import islice
    from pydoc_data import topics

    from ..data import builtin_texts

    docs = list(islice(builtin_texts(), pool))
    n_prose = min(len(topics.topics), len(docs))
    kinds = [docs[:n_prose], docs[n_prose:]]
    order = [kinds[j % 2][(j // 2 * STRIDE) % len(kinds[j % 2])] for j in range(2 * len(docs)) if kinds[j % 2]]
    out: list[str] = []
    for text in order:
        start = text.find("\n", len(text) // 3) + 1
        ids = tokenizer(text[start : start + 50 * n_tokens], add_special_tokens=False)["input_ids"][: n_tokens - 1]
        prompt = tokenizer.decode(ids)
        if len(ids) == n_tokens - 1 and prompt.strip() and prompt not in out:
            out.append(prompt)
        if len(out) == n:
            return out
    raise UserError(f"the built-in corpus gave {len(out)} prompts of {n_tokens} tokens, not {n}")


def validate_prompts(config, n: int, n_features: int = 10, out_folder=None) -> ValidationReport:
    """`saelab attribute REPLACEMENT --validate N --out DIR`: validate the graphs of N built-in corpus prompts
    (corpus_prompts) and write DIR/validation.json + DIR/validation.png. `config`: the AttributeConfig (reads
    replacement, model, device, dtype, threads, out, max_logits, logit_prob, max_feature_nodes (0: all),
    batch_size, zero_positions); the caller checks it and the --out folder first (no --prompt needed).
    `out_folder()` (default: config.out) gives the folder to write into; it is called only once every graph
    is computed, so a folder being replaced keeps its old report until then. Prints the summary line."""
    from ..models import load_model
    from ..sae.replacement import open_replacement

    if n < 1:
        raise UserError(f"--validate takes the number of prompts (at least 1), not {n}")
    if config.threads:
        torch.set_num_threads(config.threads)
    rep = open_replacement(Path(config.replacement), config.device)
    lm = load_model(str(config.model or rep.model_spec), config.device, config.dtype)
    prompts = corpus_prompts(lm.tokenizer, n)
    report = validate(
        lm,
        rep,
        prompts,
        n_features,
        max_n_logits=config.max_logits,
        desired_logit_prob=config.logit_prob,
        max_feature_nodes=config.max_feature_nodes or None,  # 0: every active feature
        batch_size=config.batch_size,
        zero_positions=config.zero_positions,
        progress=True,
    )
    out = Path(out_folder() if out_folder is not None else config.out)
    report.write(out)
    print(report.message())
    print(f"wrote {out / JSON} and {out / PLOT}")
    return report
