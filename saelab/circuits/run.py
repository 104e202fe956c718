"""`saelab attribute REPLACEMENT --prompt TEXT --out DIR` (and `attribute_prompt` in the Python API): the
attribution graph of one prompt through a replacement model, pruned, scored and written as a graph folder
(graph.safetensors + graph.json, and the circuit-tracer / Neuronpedia `<slug>.json` beside them).

Bad input fails before the model loads wherever it can: the options (config.py), the output folder, the
replacement folder, then the prompt and the targets with the tokenizer alone (a model on disk keeps one);
what needs the model (its depth and widths against the replacement's) right after it loads, still before
any attribution and before anything is written."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..features.steer import prompt_ids
from ..model_pair import local_tokenizer, tokenizer_folder, vocab_differs  # the tokenizer on disk, before a model loads
from ..models import LoadedModel, decoder_layers, load_model
from ..out_folder import ATTRIBUTION_GRAPH, GRAPH_VALIDATION, kind_of, open_out
from ..sae.folder import check_fits
from ..sae.replacement import Replacement, open_replacement
from .config import AttributeConfig
from .graph import Graph, save_graph
from .neuronpedia import slugify, write_graph_json
from .prune import graph_scores, prune_graph

MEMORY_WHY = (
    "the graph's memory and time grow as feature nodes x (features + errors + tokens), and active features and "
    "error nodes grow with every token"
)


@dataclass(frozen=True)
class TargetSpec:
    """A target as the user gave it, checked against the vocabulary / the replacement: kind 'logit' (ids: one
    vocab id), 'diff' (ids: b, a) or 'feature' (ids: layer, position, feature id)."""

    kind: str
    ids: tuple[int, ...]

    def to_attribution(self):
        from .targets import AttributionTarget

        if self.kind == "logit":
            return AttributionTarget.logit(*self.ids)
        if self.kind == "diff":
            return AttributionTarget.logit_diff(*self.ids)
        return AttributionTarget.of_feature(*self.ids)


@dataclass
class Prepared:
    """What the checks before attribution produced."""

    replacement: Replacement
    model_spec: str
    tokens: torch.Tensor  # [n_pos] long
    targets: list[TargetSpec] | None  # None: the top logits
    tokenizer: object | None  # None: not on disk (read with the model)


def encode(tokenizer, prompt: str, max_tokens: int, zero_positions: int) -> torch.Tensor:
    """[n_pos] the prompt's ids, BOS first when the tokenizer has one (as the dictionaries trained)."""
    ids = prompt_ids(tokenizer, prompt)
    if not ids:
        raise UserError("--prompt is empty after tokenisation: give the text to attribute")
    if len(ids) > max_tokens:
        raise UserError(
            f"the prompt is {len(ids)} tokens; the limit is {max_tokens} (--max-tokens): {MEMORY_WHY}; "
            f"shorten the prompt or raise --max-tokens"
        )
    if len(ids) <= zero_positions:
        raise UserError(
            f"the prompt is {len(ids)} token(s), all within --zero-positions {zero_positions} (no feature nodes "
            f"there): give a longer prompt"
        )
    return torch.tensor(ids, dtype=torch.long)


def one_token(tokenizer, text: str, option: str, spec: str) -> int:
    """The vocabulary id of `text`, which must be exactly one token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise UserError(
            f"{option} {text!r} is not a token of the vocabulary of model {spec!r}"
            + (f" (it is {len(ids)} tokens: {pieces})" if ids else " (it is empty)")
            + "; a target is one token, e.g. ' b' with its leading space"
        )
    return int(ids[0])


def layer_width(rep: Replacement, layer: int) -> int:
    """Features in the replacement's dictionary at `layer` (a CLT: its per-layer share)."""
    if layer not in rep.layers:
        raise UserError(
            f"--target-feature: layer {layer} has no dictionary in {rep.path} (its layers: "
            f"{', '.join(map(str, rep.layers))})"
        )
    if rep.kind == "plt":
        return int(rep.dictionaries[rep.layers.index(layer)].cfg.d_sae)
    return int(rep.dictionaries[0].cfg.d_sae) // len(rep.layers)


def resolve_targets(cfg: AttributeConfig, tokenizer, rep: Replacement, spec: str, n_pos: int):
    if cfg.target:
        return [TargetSpec("logit", (one_token(tokenizer, t, "--target", spec),)) for t in cfg.target]
    if cfg.target_diff:
        b, a = (one_token(tokenizer, t, "--target-diff", spec) for t in cfg.target_diff)
        if a == b:
            raise UserError(f"--target-diff {cfg.target_diff[0]!r} {cfg.target_diff[1]!r}: the same token twice")
        return [TargetSpec("diff", (b, a))]
    feature = cfg.feature_target()
    if feature:
        layer, pos, fid = feature
        width = layer_width(rep, layer)
        if not 0 <= fid < width:
            raise UserError(f"--target-feature: feature {fid} is outside layer {layer}'s 0..{width - 1}")
        p = pos + n_pos if pos < 0 else pos
        if not cfg.zero_positions <= p < n_pos:
            raise UserError(
                f"--target-feature: position {pos} is outside the prompt's feature positions "
                f"{cfg.zero_positions}..{n_pos - 1} ({n_pos} tokens, --zero-positions {cfg.zero_positions})"
            )
        return [TargetSpec("feature", (layer, p, fid))]
    return None


def check_out(cfg: AttributeConfig):
    """--out: new, empty, or a graph folder replaced with --overwrite (never another kind of folder, and
    never a folder of unknown files, whose JSON files --overwrite would remove)."""
    folder = open_out(cfg.out, ATTRIBUTION_GRAPH, overwrite=cfg.overwrite)
    out = Path(cfg.out)
    if folder.replace and out.is_dir() and any(out.iterdir()) and kind_of(out) is not ATTRIBUTION_GRAPH:
        raise UserError(f"--out {out} holds files that are not an attribution graph; choose a new or empty folder")
    return folder


def prepare(cfg: AttributeConfig) -> Prepared:
    """Every check before the model loads (see the module docstring)."""
    cfg.validate()
    rep = open_replacement(Path(cfg.replacement), cfg.device)
    spec = str(cfg.model or rep.model_spec)
    tok = local_tokenizer(tokenizer_folder(spec))
    if cfg.model and spec != str(rep.model_spec):
        theirs = local_tokenizer(tokenizer_folder(str(rep.model_spec)))
        why = tok is not None and theirs is not None and vocab_differs(tok, theirs)
        if why:
            raise UserError(
                f"{rep.path} was trained on model {rep.model_spec!r}, whose tokenizer is not the one of --model "
                f"{spec!r} ({why}); attribute with the model the replacement was trained on"
            )
    if tok is None:
        return Prepared(rep, spec, torch.empty(0, dtype=torch.long), None, None)
    ids = encode(tok, cfg.prompt, cfg.max_tokens, cfg.zero_positions)
    return Prepared(rep, spec, ids, resolve_targets(cfg, tok, rep, spec, len(ids)), tok)


def check_model(rep: Replacement, model, spec: str, ids: torch.Tensor) -> None:
    """The loaded model is the one the replacement replaces: its depth, the dictionaries' sites and widths,
    and a vocabulary that holds the prompt's ids."""
    n = len(decoder_layers(model)[1])
    if n != rep.model_layers:
        raise UserError(f"{rep.path} replaces a {rep.model_layers}-layer model; model {spec!r} has {n} layers")
    check_fits(rep.folders, model)
    vocab = model.get_input_embeddings().weight.shape[0]
    if int(ids.max()) >= vocab:
        raise UserError(f"the prompt's token id {int(ids.max())} is outside model {spec!r}'s {vocab} embeddings")


def attribute_prompt(
    cfg: AttributeConfig, progress: bool | Callable[[int, int], None] = True, lm: LoadedModel | None = None
) -> Path:
    """The graph of `cfg.prompt` written to `cfg.out`; returns that folder. `progress`: a bar on stderr (True),
    none (False), or a callable(rows done, rows in all), as attribution.attribute takes it. `lm`: the model
    already loaded (the web app's), checked against the replacement as a loaded one would be."""
    t0 = time.time()
    folder = check_out(cfg)
    prep = prepare(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if lm is None:
        lm = load_model(prep.model_spec, device=cfg.device, dtype=cfg.dtype)
    if prep.tokenizer is None:  # a hub / GGUF model: its tokenizer came with it
        prep.tokens = encode(lm.tokenizer, cfg.prompt, cfg.max_tokens, cfg.zero_positions)
        prep.targets = resolve_targets(cfg, lm.tokenizer, prep.replacement, prep.model_spec, len(prep.tokens))
    check_model(prep.replacement, lm.model, prep.model_spec, prep.tokens)
    t_load = time.time()

    from .attribution import attribute  # the core (the lead's); imported here so the checks above need none

    graph = attribute(
        lm.model,
        prep.replacement,
        prep.tokens.to(cfg.device),
        targets=None if prep.targets is None else [t.to_attribution() for t in prep.targets],
        max_n_logits=cfg.max_logits,
        desired_logit_prob=cfg.logit_prob,
        max_feature_nodes=cfg.max_feature_nodes or None,
        batch_size=cfg.batch_size,
        zero_positions=cfg.zero_positions,
        progress=progress,
        tokenizer=lm.tokenizer,
    )
    t_attr = time.time()
    graph = graph_to_cpu(graph)
    graph.prompt = cfg.prompt
    pruned = prune_graph(graph, cfg.node_threshold, cfg.edge_threshold)
    replacement_score, completeness_score = graph_scores(graph)
    slug = cfg.slug or slugify(Path(cfg.out).resolve().name)
    rep = prep.replacement
    graph.meta = {
        "replacement": str(rep.path),
        "family": rep.family,
        "kind": rep.kind,
        "scan": f"saelab-{rep.path.name}",
        "vocab_size": int(lm.model.get_input_embeddings().weight.shape[0]),
        "zero_positions": cfg.zero_positions,
        **graph.meta,
        "model": prep.model_spec,
        "slug": slug,
        "prune": {"node_threshold": cfg.node_threshold, "edge_threshold": cfg.edge_threshold},
        "scores": {"replacement": replacement_score, "completeness": completeness_score},
    }
    graph.meta.setdefault("timings", {}).update(
        {"load_s": t_load - t0, "attribution_s": t_attr - t_load, "prune_s": time.time() - t_attr}
    )
    out = folder.prepare()
    save_graph(graph, out)
    extra = {"graph": "graph.json", "replacement_score": replacement_score, "completeness_score": completeness_score}
    json_path = write_graph_json(
        graph, pruned, out, slug, graph.meta["scan"], node_threshold=cfg.node_threshold, extra_metadata=extra
    )
    print(summary(graph, pruned, json_path, time.time() - t0), file=sys.stderr)
    folder.done()
    return out


def validate_graphs(cfg: AttributeConfig) -> Path:
    """`saelab attribute REPLACEMENT --validate-prompts N --out DIR`: the graphs of N built-in corpus prompts
    checked against ablations (circuits/validate.py); DIR gets validation.json + validation.png."""
    cfg.validate()
    open_replacement(Path(cfg.replacement), cfg.device)  # a bad folder fails before any model loads
    folder = open_out(cfg.out, GRAPH_VALIDATION, overwrite=cfg.overwrite)
    out = Path(cfg.out)
    if folder.replace and out.is_dir() and any(out.iterdir()) and kind_of(out) is not GRAPH_VALIDATION:
        raise UserError(f"--out {out} holds files that are not a graph validation; choose a new or empty folder")
    from .validate import validate_prompts  # imports the core; the checks above need none

    # folder.prepare (which removes an old report) runs only once the new report is computed
    validate_prompts(cfg, cfg.validate_prompts, cfg.validate_features, out_folder=folder.prepare)
    folder.done()
    return folder.path


def graph_to_cpu(graph: Graph) -> Graph:
    for name in ("tokens", "active_features", "activation_values", "selected_features", "adjacency"):
        setattr(graph, name, getattr(graph, name).detach().cpu())
    graph.target_tokens, graph.target_weights = graph.target_tokens.cpu(), graph.target_weights.cpu().float()
    return graph


def summary(graph: Graph, pruned, json_path: Path, seconds: float) -> str:
    """A few lines: targets, nodes kept by kind, edges kept, the two scores, the time."""
    kinds = graph.node_kinds()
    kept = {k: int(sum(1 for i, m in enumerate(pruned.node_mask.tolist()) if m and kinds[i] == k)) for k in kinds}
    edges = int((pruned.edge_mask & pruned.node_mask[:, None] & pruned.node_mask[None, :]).sum())
    targets = ", ".join(
        f"{lab!r} ({float(w):.2f})" if int(t) >= 0 else f"{lab} ({float(w):.2f})"
        for lab, t, w in zip(graph.target_labels, graph.target_tokens, graph.target_weights)
    )
    s = graph.meta["scores"]
    return (
        f"saelab: attribution graph of {graph.n_pos} tokens -> {json_path.parent}\n"
        f"  targets: {targets}\n"
        f"  features: {graph.active_features.shape[0]:,} active, {graph.n_sel:,} attributed, {kept['feature']:,} "
        f"kept; errors kept {kept['error']:,}; edges kept {edges:,} of {int((graph.adjacency != 0).sum()):,}\n"
        f"  replacement score {s['replacement']:.3f}, completeness {s['completeness']:.3f}; {seconds:.1f} s\n"
        f"  {json_path.name}: the Neuronpedia / circuit-tracer graph JSON"
    )
