"""`saelab bench` as its steps (`bench(BenchConfig)`): check the options (config.py) and the inputs
(the task file, the folders agree on site and model, the output folder) before any model loads ->
the model and rows once (`open_shared_data`) and the dictionaries (SAE folders + baselines), when a
chosen metric needs them -> each chosen metric in registry order (registry.py: its `compute`), its
JSON written as soon as it is done -> bench.json, report.md/html and bench.png. Nothing here names
a metric."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from ...errors import UserError
from ...models import collect_activations
from ...out_folder import BENCH_REPORT, finish, open_out
from ...sae.folder import open_sae, open_shared_data, shared_provenance, unique_names
from ...sinks import excluded_positions, special_ids
from ...storage import write_json
from ..metrics import EvalBudget, batches, say_short_budget
from . import registry
from .config import BenchConfig
from .dictionaries import neuron_dictionary, pca_dictionary, random_dictionary, residual_dictionary, sae_dictionary
from .metric import BenchState
from .plots import bench_plot
from .report import write_reports
from .results import BenchManifest, DictionaryInfo
from .task_files import read_task_file

FIT_TOKENS = 16_384  # activations that fit the pca and random baselines


def check_same_site(folders) -> str:
    sites = {f.sae.cfg.hookpoint for f in folders}
    if len(sites) > 1:
        listing = "; ".join(f"{f.path}: {f.sae.cfg.hookpoint}" for f in folders)
        raise UserError(
            f"bench compares dictionaries at one site, but these read different sites ({listing}); "
            f"run one bench per site"
        )
    return sites.pop()


def _site_sample(lm, rows, site: str, sink, tokens: int, device: str) -> torch.Tensor:
    """Non-sink activations of `site` on training rows (fits PCA and the random dictionary's centre)."""
    sel = rows.train_rows[: max(1, tokens // rows.tokens.shape[1])]
    out = []
    for ids in batches(rows, sel, 8, device):
        a = collect_activations(lm.model, ids, [site])[site]
        keep = ~excluded_positions([a], ids, sink, special_ids(lm.tokenizer))
        out.append(a[keep].float().cpu())
    return torch.cat(out)


def _open_bench(cfg: BenchConfig, interp_summary: dict | None, quiet: bool) -> BenchState:
    """Every check before the model: options, task file, output folder, folders on one site and model."""
    has_interp = interp_summary is not None
    cfg.validate(has_interp)
    metrics = cfg.chosen_metrics(has_interp)
    user_task = read_task_file(cfg.tasks) if cfg.tasks else None
    out = open_out(
        cfg.out,
        BENCH_REPORT,
        cfg.overwrite,
        names=tuple(f"{m}.json" for m in metrics) + ("bench.json", "report.md", "report.html"),
    )
    folders = [open_sae(Path(d), cfg.device) for d in cfg.sae_dirs]
    site = check_same_site(folders)
    prov = shared_provenance(folders)  # the folders agree on model and corpus (a UserError names the difference)
    names = unique_names([f.name for f in folders])
    b = BenchState(cfg, metrics, out.prepare(), folders, names, site, prov, user_task, quiet, interp_summary)
    b.dicts = [sae_dictionary(f, n) for f, n in zip(folders, names)]
    return b


def _add_baselines(b: BenchState, lm, rows, fit_tokens: int) -> None:
    """The baselines, built for the site of the SAEs (pca and random fitted on training rows)."""
    sample = None
    if {"pca", "random"} & set(b.cfg.baselines):
        sample = _site_sample(lm, rows, b.site, b.sink, fit_tokens, b.cfg.device)
    first = b.folders[0].sae
    for name in dict.fromkeys(b.cfg.baselines):
        if name == "neurons":
            b.dicts.append(neuron_dictionary(lm.model, b.site, first.cfg.d_in))
        elif name == "residual":
            b.dicts.append(residual_dictionary(b.site, first.cfg.d_in))
        elif name == "pca":
            b.dicts.append(pca_dictionary(b.site, sample, min(first.cfg.d_sae, sample.shape[1])))
        else:
            b.dicts.append(random_dictionary(first, sample.mean(0)))


def _model_pass(b: BenchState, fit_tokens: int) -> None:
    """The model and held-out rows, once for every metric that needs them, and the baselines."""
    t0 = time.time()
    data = open_shared_data(b.folders, b.cfg.device)
    b.lm, b.rows = data.lm, data.rows
    say_short_budget(data.rows, EvalBudget(tokens=b.cfg.tokens, ce_tokens=b.cfg.ce_tokens))
    _add_baselines(b, data.lm, data.rows, fit_tokens)
    b.wall["load"] = time.time() - t0


def _summarise(b: BenchState, t_start: float) -> None:
    """bench.json (what was compared, and how long each part took), report.md / .html and bench.png."""
    b.wall["total"] = time.time() - t_start
    infos = [DictionaryInfo(d.name, d.kind, d.site, d.d_lat, d.source, b.l0.get(d.name)) for d in b.dicts]
    manifest = asdict(BenchManifest(infos, b.site, b.prov.model_spec, b.prov.corpus, b.metrics, b.wall, b.notes))
    plot = bench_plot(b.out / "bench.png", b.results, manifest["dictionaries"])
    write_json(b.out / "bench.json", manifest)
    write_reports(b.out, manifest, b.results, plot)
    if not b.quiet:
        print(f"bench: report {b.out / 'report.md'} ({b.wall['total']:.0f} s)")


def bench(
    cfg: BenchConfig, interp_summary: dict | None = None, quiet: bool = False, fit_tokens: int = FIT_TOKENS
) -> dict:
    """Run the suite; returns {metric: its JSON dict} (and writes everything under `cfg.out`).
    `interp_summary` is an interpretation run already summarised by the interpret stage
    (`interpret.bench_summary.autointerp_summary`): evaluation does not import a later stage."""
    t_start = time.time()
    b = _open_bench(cfg, interp_summary, quiet)
    chosen = [m for m in registry.all_metrics() if m.name in b.metrics]
    if any(m.needs_model for m in chosen):
        _model_pass(b, fit_tokens)
    for m in chosen:
        t0 = time.time()
        b.done(m.name, {"metric": m.name, **m.compute(b)}, t0)
    _summarise(b, t_start)
    finish(b.out)  # the folder's lock goes
    return b.results
