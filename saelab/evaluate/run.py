"""Evaluate SAE folders: `saelab eval` (`evaluate(EvalConfig)`), `saelab eval-e2e` (`evaluate_e2e(EvalE2EConfig)`)
and the sweep's evaluation all call `run_eval`.

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
from ..storage import write_json
from .crosscoder import crosscoder_metrics, crosscoder_report
from .later_layers import later_layer_metrics
from .metrics import EvalBudget, measure
from .model_diff import is_model_diff, model_diff_analysis, model_diff_plot
from .plots import density_plot
from .results import SaeMetrics, format_report


@dataclass
class EvalConfig:
    """`saelab eval`: held-out reconstruction and KL / CE of SAE folders (their model and corpus unless overridden)."""

    sae_dirs: list[str] = opt(help="SAE folders (saelab format); several share the clean passes", positional=True)
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
        check_types(self)
        need_at_least(self, 1, "threads")


def evaluate(cfg: EvalConfig) -> list[SaeMetrics]:
    """Write each folder's metrics.json (or cfg.out) and print a report per SAE."""
    cfg.validate()
    return run_eval(
        cfg.sae_dirs,
        tokens=cfg.tokens,
        ce_tokens=cfg.ce_tokens,
        out=cfg.out,
        corpus=cfg.corpus,
        model=cfg.model,
        overwrite=cfg.overwrite,
        device=cfg.device,
        dtype=cfg.dtype,
    )


def evaluate_e2e(cfg: EvalE2EConfig) -> list[SaeMetrics]:
    """metrics.json of each folder with alive latents and later-layer FVU (`SaeMetrics.later`); no report printed."""
    cfg.validate()
    return run_eval(
        cfg.sae_dirs,
        tokens=cfg.tokens,
        ce_tokens=cfg.ce_tokens,
        overwrite=cfg.overwrite,
        quiet=True,
        device=cfg.device,
        later_layers=True,
        dtype=cfg.dtype,
    )


def run_eval(
    sae_dirs: list[str],
    tokens: int = 100_000,
    ce_tokens: int = 16_384,
    out: str | None = None,
    corpus: str | None = None,
    model: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    device: str = "cpu",
    later_layers: bool = False,
    dtype: str = "float32",
) -> list[SaeMetrics]:
    """Evaluate SAE folders on their held-out rows; write `out` (one folder) or each folder's
    metrics.json and metrics_density.png; print a report per SAE unless `quiet`."""
    if tokens < 1 or ce_tokens < 0:
        raise UserError("--tokens must be positive and --ce-tokens non-negative")
    if later_layers and ce_tokens < 1:
        raise UserError("--ce-tokens must be positive: later-layer FVU and CE increase need full forwards")
    if out and len(sae_dirs) > 1:
        raise UserError("--out names one metrics file; with several SAEs leave it out (each gets metrics.json)")
    check_dtype(dtype, device)
    folders = [open_sae(Path(d), device) for d in sae_dirs]  # corrupt/missing files fail here, before the model loads
    targets = [Path(out)] if out else [Path(d) / "metrics.json" for d in sae_dirs]
    for t in targets:
        if t.exists() and not overwrite:
            raise UserError(f"{t} exists; pass --overwrite to replace it")
    crosscoders = [f for f in folders if multi_site(f.sae.cfg)]
    if crosscoders and (len(crosscoders) < len(folders) or later_layers):
        raise UserError(
            "evaluate crosscoders on their own, without --later-layers (they report per-site FVU and "
            "the CE of splicing every site: docs/DICTIONARIES.md)"
        )
    pair = _model_pair(folders, model, device, dtype)  # model diffing: both models, as one module
    data = open_shared_data(folders, device, model, corpus, dtype=dtype, loaded_model=pair)
    lm, rows, prov = data.lm, data.rows, data.provenance
    if crosscoders:
        _eval_crosscoders(
            sae_dirs, folders, targets, data, EvalBudget(tokens=tokens, ce_tokens=ce_tokens), device, quiet
        )
        return []
    saes = [(f.sae, f.provenance.sink) for f in folders]
    budget = EvalBudget(tokens=tokens, ce_tokens=ce_tokens)
    t0 = time.time()
    results, firing = measure(lm.model, lm.tokenizer, saes, rows, budget, device)
    if later_layers:
        for m, later in zip(results, later_layer_metrics(lm.model, lm.tokenizer, saes, rows, budget, results, device)):
            m.later = later
    wall = time.time() - t0
    for d, f, target, m, freq, match in zip(sae_dirs, folders, targets, results, firing, data.matches):
        png = target.with_name(target.stem + "_density.png")
        density_plot(freq, png, f"{f.name}: latent firing frequency", (m.l0_histogram, m.l0_histogram_edges))
        write_json(
            target,
            {
                "sae": str(d),
                "model": prov.model_spec,
                "corpus": prov.corpus,
                "data_fingerprint": rows.fingerprint,
                "heldout_fraction": prov.heldout_fraction,
                "data_matches_training": match,
                "split": "heldout",
                "wall_s": wall,
                "metrics": m.to_dict(),
                "descriptions": m.descriptions(),
                "density_plot": png.name,
            },
        )
        if not quiet:
            print(format_report(f.name, m, target))
    return results


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


def _eval_crosscoders(sae_dirs, folders, targets, data, budget: EvalBudget, device: str, quiet: bool) -> None:
    """metrics.json of each crosscoder (evaluate/crosscoder.py): per-site FVU, all sites spliced at once."""
    prov, rows = data.provenance, data.rows
    for d, f, target, match in zip(sae_dirs, folders, targets, data.matches):
        t0 = time.time()
        m = crosscoder_metrics(data.lm.model, data.lm.tokenizer, f.sae, f.provenance.sink, rows, budget, device)
        record = {"sae": str(d), "model": prov.model_spec, "corpus": prov.corpus}
        if is_model_diff(f.sae):  # decoder norms per model (evaluate/model_diff.py) and their histograms
            png = target.with_name(target.stem + "_model_diff.png")
            m["model_diff"] = model_diff_analysis(f.sae)
            model_diff_plot(f.sae, png, f"{f.name}: model A vs B")
            record |= {"model_b": f.provenance.model_b, "model_diff_plot": png.name}
        write_json(
            target,
            record
            | {
                "data_fingerprint": rows.fingerprint,
                "heldout_fraction": prov.heldout_fraction,
                "data_matches_training": match,
                "split": "heldout",
                "wall_s": time.time() - t0,
                "metrics": m,
            },
        )
        if not quiet:
            print(crosscoder_report(f.name, m, target))
