"""Evaluate SAE folders: `saelab eval` (`evaluate(EvalConfig)`), `saelab eval-e2e` and the sweep's evaluation
(`evaluate_e2e(EvalE2EConfig)`).

It opens the folders, then their model and token rows once (`open_shared_data`: the model, corpus,
context, held-out fraction and text field they were trained with, unless overridden), checks they
fit the model, measures every SAE on the held-out rows in shared passes (with `later_layers`, also
alive latents and the FVU of every later block), and writes each metrics.json once, with its
density plot, recording whether the rows were the ones the SAE was trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..model_pair import load_pair
from ..option_checks import check_dtype, check_types, need_at_least
from ..options import (
    corpus_option,
    device_option,
    dtype_option,
    model_option,
    opt,
    out_option,
    overwrite_option,
    threads_option,
)
from ..sae.folder import open_sae, open_shared_data
from ..sae.registry import multi_site
from ..sae.replacement import is_replacement
from ..storage import write_json
from .crosscoder import crosscoder_metrics, crosscoder_report
from .later_layers import later_layer_metrics
from .metrics import EvalBudget, measure, say_short_budget
from .model_diff import is_model_diff, model_diff_analysis, model_diff_plot
from .plots import density_plot
from .replacement import METRICS as REPLACEMENT_METRICS
from .replacement import evaluate_replacement
from .results import SaeMetrics, format_report


@dataclass
class EvalConfig:
    """`saelab eval`: held-out reconstruction and KL / CE of SAE folders (their model and corpus unless overridden)."""

    sae_dirs: list[str] = opt(
        help="SAE folders (saelab format; several share the clean passes), or one replacement folder (train --layers)",
        positional=True,
    )
    tokens: int = opt(100_000, "held-out tokens for reconstruction metrics")
    ce_tokens: int = opt(16_384, "held-out tokens for KL / CE metrics (full forwards)")
    out: str | None = out_option("metrics file", shown="metrics.json inside each SAE folder")
    corpus: str | None = corpus_option(None, shown="the one recorded in the SAE folder")
    model: str | None = model_option(None, shown="the one recorded in the SAE folder")
    threads: int | None = threads_option()
    device: str = device_option()
    dtype: str = dtype_option()
    overwrite: bool = overwrite_option("an existing metrics file")

    def validate(self) -> None:
        """The checks that need no folder or model: option types and ranges (a UserError names the option)."""
        check_types(self)
        need_at_least(self, 1, "threads")


@dataclass
class EvalE2EConfig:
    """`saelab eval-e2e`: `saelab eval` plus alive latents and the FVU of every later layer, SAE spliced in."""

    sae_dirs: list[str] = opt(help="SAE folders of one model and corpus", positional=True)
    tokens: int = opt(50_000, "held-out tokens for FVU / L0 / alive")
    ce_tokens: int = opt(8192, "held-out tokens for KL / CE / later-layer FVU")
    threads: int | None = threads_option()
    device: str = device_option()
    dtype: str = dtype_option()
    overwrite: bool = overwrite_option("existing metrics.json files")

    def validate(self) -> None:
        """The checks that need no folder or model: option types and ranges (a UserError names the option)."""
        check_types(self)
        need_at_least(self, 1, "threads")


def evaluate(cfg: EvalConfig, quiet: bool = False) -> list[SaeMetrics]:
    """Evaluate SAE folders on their held-out rows; write `cfg.out` (one folder) or each folder's
    metrics.json and metrics_density.png; print a report per SAE unless `quiet`."""
    cfg.validate()
    if any(is_replacement(d) for d in cfg.sae_dirs):  # a --layers run folder: evaluate/replacement.py
        evaluate_replacement(cfg, quiet)
        return []
    return _evaluate(cfg, later_layers=False, quiet=quiet)


def evaluate_e2e(cfg: EvalE2EConfig) -> list[SaeMetrics]:
    """metrics.json of each folder with alive latents and later-layer FVU (`SaeMetrics.later`); no report printed."""
    cfg.validate()
    fields = ("sae_dirs", "tokens", "ce_tokens", "threads", "device", "dtype", "overwrite")
    return _evaluate(EvalConfig(**{f: getattr(cfg, f) for f in fields}), later_layers=True, quiet=True)


def metrics_files(cfg: EvalConfig | EvalE2EConfig) -> list[Path]:
    """Where evaluating `cfg` writes: `cfg.out`, else each folder's metrics.json (a replacement folder: its
    replacement_metrics.json)."""
    if getattr(cfg, "out", None):
        return [Path(cfg.out)]
    if any(is_replacement(d) for d in cfg.sae_dirs):
        return [Path(cfg.sae_dirs[0]) / REPLACEMENT_METRICS]
    return [Path(d) / "metrics.json" for d in cfg.sae_dirs]


def _evaluate(cfg: EvalConfig, later_layers: bool, quiet: bool) -> list[SaeMetrics]:
    """Check -> open the folders and their shared data -> measure in shared passes -> write each record."""
    _check(cfg, later_layers)
    folders = [open_sae(Path(d), cfg.device) for d in cfg.sae_dirs]  # corrupt/missing files fail before the model
    targets = metrics_files(cfg)
    for t in targets:
        if t.exists() and not cfg.overwrite:
            raise UserError(f"{t} exists; pass --overwrite to replace it")
    crosscoders = [f for f in folders if multi_site(f.sae.cfg)]
    if crosscoders and (len(crosscoders) < len(folders) or later_layers):
        raise UserError(
            "evaluate crosscoders on their own, without --later-layers (they report per-site FVU and "
            "the CE of splicing every site: docs/DICTIONARIES.md)"
        )
    pair = _model_pair(folders, cfg.model, cfg.device, cfg.dtype)  # model diffing: both models, as one module
    data = open_shared_data(folders, cfg.device, cfg.model, cfg.corpus, dtype=cfg.dtype, loaded_model=pair)
    if crosscoders:
        say_short_budget(data.rows, EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens))
        _eval_crosscoders(cfg, folders, targets, data, quiet)
        return []
    budget = EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens)
    say_short_budget(data.rows, budget)
    saes = [(f.sae, f.provenance.sink) for f in folders]
    lm, rows = data.lm, data.rows
    t0 = time.time()
    results, firing = measure(lm.model, lm.tokenizer, saes, rows, budget, cfg.device)
    if later_layers:
        later = later_layer_metrics(lm.model, lm.tokenizer, saes, rows, budget, results, cfg.device)
        for m, per_layer in zip(results, later):
            m.later = per_layer
    wall = time.time() - t0
    prov = data.provenance
    for d, f, target, m, freq, match in zip(cfg.sae_dirs, folders, targets, results, firing, data.matches):
        record = {"sae": str(d), "model": prov.model_spec, "corpus": prov.corpus} | _data_fields(data, match)
        _write_metrics(target, f.name, m, freq, record | {"wall_s": wall})
        if not quiet:
            print(format_report(f.name, m, target))
    return results


def _check(cfg: EvalConfig, later_layers: bool) -> None:
    if cfg.tokens < 1 or cfg.ce_tokens < 0:
        raise UserError("--tokens must be positive and --ce-tokens non-negative")
    if later_layers and cfg.ce_tokens < 1:
        raise UserError("--ce-tokens must be positive: later-layer FVU and CE increase need full forwards")
    if cfg.out and len(cfg.sae_dirs) > 1:
        raise UserError("--out names one metrics file; with several SAEs leave it out (each gets metrics.json)")
    check_dtype(cfg.dtype, cfg.device)


def _data_fields(data, match: bool) -> dict:
    """What a metrics record says about the rows it was measured on."""
    return {
        "data_fingerprint": data.rows.fingerprint,
        "heldout_fraction": data.provenance.heldout_fraction,
        "data_matches_training": match,
        "split": "heldout",
    }


def _write_metrics(target: Path, name: str, m: SaeMetrics, freq, record: dict) -> None:
    """One SAE's metrics.json (or --out): `record` then its metrics, and the density plot beside it."""
    png = target.with_name(target.stem + "_density.png")
    density_plot(freq, png, f"{name}: latent firing frequency", (m.l0_histogram, m.l0_histogram_edges))
    write_json(target, record | {"metrics": m.to_dict(), "descriptions": m.descriptions(), "density_plot": png.name})


def _model_pair(folders, model: str | None, device: str, dtype: str):
    """Model diffing folders (trained with --model-b) are evaluated on both models, as a ModelPair."""
    diffs = [f for f in folders if f.provenance.model_b]
    if not diffs:
        return None
    if len(folders) > 1:
        raise UserError(
            f"{diffs[0].path} diffs two models (--model-b {diffs[0].provenance.model_b}); evaluate it on its own"
        )
    return load_pair(model or diffs[0].provenance.model_spec, diffs[0].provenance.model_b, device, dtype)


def _eval_crosscoders(cfg: EvalConfig, folders, targets: list[Path], data, quiet: bool) -> None:
    """metrics.json of each crosscoder (evaluate/crosscoder.py): per-site FVU, all sites spliced at once."""
    prov, rows = data.provenance, data.rows
    budget = EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens)
    for d, f, target, match in zip(cfg.sae_dirs, folders, targets, data.matches):
        t0 = time.time()
        m = crosscoder_metrics(data.lm.model, data.lm.tokenizer, f.sae, f.provenance.sink, rows, budget, cfg.device)
        record = {"sae": str(d), "model": prov.model_spec, "corpus": prov.corpus}
        if is_model_diff(f.sae):  # decoder norms per model (evaluate/model_diff.py) and their histograms
            png = target.with_name(target.stem + "_model_diff.png")
            m["model_diff"] = model_diff_analysis(f.sae)
            model_diff_plot(f.sae, png, f"{f.name}: model A vs B")
            record |= {"model_b": f.provenance.model_b, "model_diff_plot": png.name}
        write_json(target, record | _data_fields(data, match) | {"wall_s": time.time() - t0, "metrics": m})
        if not quiet:
            print(crosscoder_report(f.name, m, target))
