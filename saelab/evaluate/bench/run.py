"""`saelab bench`: every check on the arguments first (metric and baseline names, the folders agree
on site and model, the task file, the interpretation run, the output folder), then the model and
rows once (`open_shared_data`), the dictionaries (SAE folders + baselines), and each metric in turn;
each metric's JSON is written as soon as it is done, then bench.json, report.md/html and bench.png."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from ...models import collect_activations
from ...sae.folder import open_sae, open_shared_data, shared_provenance, unique_names
from ...sinks import excluded_positions, special_ids
from ...storage import refuse_replacing, write_json
from ..metrics import EvalBudget, batches, measure
from ..results import DESCRIPTIONS
from . import absorption as ab
from .dictionaries import (check_baselines, neuron_dictionary, pca_dictionary, random_dictionary,
                           residual_dictionary, sae_dictionary)
from .encode import encode_task
from .plots import bench_plot
from .probing import KS, probe_task, summarise
from .report import write_reports
from .results import METRICS, AbsorptionReport, AbsorptionResult, BenchManifest, DictionaryInfo
from .task_files import file_task, read_task_file
from .tasks import Task, builtin_tasks, split_rows

NEEDS_MODEL = {"core", "probing", "absorption"}


def check_metrics(metrics: list[str]) -> list[str]:
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UserError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(metrics))


def check_same_site(folders) -> str:
    sites = {f.sae.cfg.hookpoint for f in folders}
    if len(sites) > 1:
        listing = "; ".join(f"{f.path}: {f.sae.cfg.hookpoint}" for f in folders)
        raise UserError(f"bench compares dictionaries at one site, but these read different sites ({listing}); "
                        f"run one bench per site")
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


def _words_task(tokenizer, seed: int, scale: float) -> tuple[Task, list[str]]:
    ids, labels, letters = ab.vocabulary_words(tokenizer, seed, max(10, int(ab.PER_LETTER * scale)))
    if len(letters) < 2:
        raise UserError("absorption: the tokenizer has too few word tokens (space + 3 letters) per first letter")
    n = len(ids)
    rows = np.stack([np.full(n, tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[0]),
                     np.asarray(ids)], 1).astype(np.int64)
    return Task("first_letter", "token", letters, "first letter of a word token", rows, np.full(n, 2),
                np.asarray(labels), np.arange(n), np.ones(n, dtype=np.int64), split_rows(n, seed)), letters


def run_absorption(lm, dicts, site, sink, seed, device, scale: float = 1.0) -> AbsorptionReport:
    task, letters = _words_task(lm.tokenizer, seed, scale)
    sparse = [d for d in dicts if d.sparse and d.directions is not None]
    enc = encode_task(lm.model, lm.tokenizer, task, sparse, site, sink, batch_rows=256, device=device,
                      desc="bench: absorption")
    y = torch.from_numpy(task.labels[enc.keep])
    tr = torch.from_numpy(task.train[enc.keep])
    x = enc.site[site]
    probe, acc = ab.first_letter_probe(x[tr], y[tr], x[~tr], y[~tr], len(letters))
    chance = float(np.bincount(y[~tr].numpy()).max() / max(int((~tr).sum()), 1))
    results = []
    for d in dicts:
        if d in sparse:
            z = enc.codes[d.name]
            results.append(ab.dictionary_absorption(d.name, d.kind, probe, letters, x[~tr], y[~tr], z[tr], y[tr],
                                                    z[~tr], d.directions, x[tr].mean(0), seed))
        else:
            results.append(AbsorptionResult(d.name, d.kind, False, None, None, None))
    return AbsorptionReport(acc, chance, int(len(y)), letters, acc < 0.5, results)


def run_bench(sae_dirs: list[str], out: str, metrics: list[str] | None = None, baselines: list[str] = (),
              interp_summary: dict | None = None, tasks_file: str | None = None, device: str = "cpu",
              overwrite: bool = False, core_tokens: int = 20_000, ce_tokens: int = 1024, task_scale: float = 1.0,
              seed: int = 0, quiet: bool = False, fit_tokens: int = 16_384) -> dict:
    """Run the suite; returns {metric: its JSON dict} (and writes everything under `out`).
    `interp_summary` is an interpretation run already summarised by the interpret stage
    (`interpret.bench_summary.autointerp_summary`): evaluation does not import a later stage."""
    t_start = time.time()
    metrics = check_metrics(list(metrics) if metrics else ["core", "probing", "absorption"]
                            + (["autointerp"] if interp_summary else []))
    baselines = check_baselines(list(baselines))
    if "autointerp" in metrics and interp_summary is None:
        raise UserError("metric autointerp needs --interp RUN_DIR (an `saelab explain` / `saelab score` run)")
    if core_tokens < 1 or ce_tokens < 0:
        raise UserError("--tokens must be positive and --ce-tokens non-negative")
    user_task = read_task_file(tasks_file) if tasks_file else None
    if user_task and "probing" not in metrics:
        raise UserError("--tasks adds a probing task; include `probing` in --metrics")
    if not sae_dirs:
        raise UserError("bench needs at least one SAE folder")
    out_dir = Path(out)
    refuse_replacing(out_dir, [f"{m}.json" for m in metrics] + ["bench.json", "report.md", "report.html"],
                     overwrite, "bench report")
    folders = [open_sae(Path(d), device) for d in sae_dirs]
    site = check_same_site(folders)
    prov = shared_provenance(folders)  # the folders agree on model and corpus (a UserError names the difference)
    sink = folders[0].provenance.sink
    wall: dict[str, float] = {}
    results: dict[str, dict] = {}
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)

    def done(name: str, obj: dict, t0: float) -> None:
        wall[name] = time.time() - t0
        results[name] = obj
        write_json(out_dir / f"{name}.json", obj)
        if not quiet:
            print(f"bench: {name} done in {wall[name]:.0f} s -> {out_dir / (name + '.json')}")

    names = unique_names([f.name for f in folders])  # every result below is keyed by these
    dicts = [sae_dictionary(f, n) for f, n in zip(folders, names)]
    l0: dict[str, float | None] = {}
    lm = None
    if NEEDS_MODEL & set(metrics):
        t0 = time.time()
        data = open_shared_data(folders, device)
        lm, rows = data.lm, data.rows
        sample = None
        if {"pca", "random"} & set(baselines):
            sample = _site_sample(lm, rows, site, sink, fit_tokens, device)
        for b in baselines:
            if b == "neurons":
                dicts.append(neuron_dictionary(lm.model, site, folders[0].sae.cfg.d_in))
            elif b == "residual":
                dicts.append(residual_dictionary(site, folders[0].sae.cfg.d_in))
            elif b == "pca":
                dicts.append(pca_dictionary(site, sample, min(folders[0].sae.cfg.d_sae, sample.shape[1])))
            else:
                dicts.append(random_dictionary(folders[0].sae, sample.mean(0)))
        wall["load"] = time.time() - t0
        if "core" in metrics:
            t0 = time.time()
            res, _ = measure(lm.model, lm.tokenizer, [(f.sae, f.provenance.sink) for f in folders], rows,
                             EvalBudget(tokens=core_tokens, ce_tokens=ce_tokens), device)
            for n, m in zip(names, res):
                l0[n] = m.l0
            done("core", {"metric": "core", "tokens": core_tokens, "ce_tokens": ce_tokens,
                          "dictionaries": [{"dictionary": n, **m.to_dict()} for n, m in zip(names, res)],
                          "descriptions": DESCRIPTIONS}, t0)
        if "probing" in metrics:
            t0 = time.time()
            tasks = builtin_tasks(lm.tokenizer, seed, task_scale)
            if user_task:
                tasks.append(file_task(lm.tokenizer, tasks_file, *user_task, seed=seed))
            per: dict[str, list] = {d.name: [] for d in dicts}
            for task in tasks:
                enc = encode_task(lm.model, lm.tokenizer, task, dicts, site, sink, device=device)
                for d, r in zip(dicts, probe_task(task, enc, dicts, KS, seed)):
                    per[d.name].append(r)
                if task.level == "token":  # L0 of each dictionary on real tokens (dense bases: their width)
                    for d in dicts:
                        l0.setdefault(d.name, float((enc.codes[d.name] != 0).sum(1).float().mean()))
            done("probing", {"metric": "probing", "ks": list(KS), "seed": seed,
                             "tasks": [{"task": t.name, "level": t.level, "classes": t.classes,
                                        "description": t.description} for t in tasks],
                             "dictionaries": [asdict(summarise(d, per[d.name], KS)) for d in dicts]}, t0)
        if "absorption" in metrics:
            t0 = time.time()
            rep = run_absorption(lm, dicts, site, sink, seed, device, task_scale)
            if rep.weak:
                notes.append(f"absorption: the first-letter probe reaches only {rep.probe_accuracy:.2f} held-out "
                             f"accuracy at {site}; the absorption numbers mean little there")
            done("absorption", {"metric": "absorption", **asdict(rep)}, t0)
    if "autointerp" in metrics:
        done("autointerp", {"metric": "autointerp", **interp_summary}, time.time())
    if "synthetic" in metrics:
        t0 = time.time()
        # imported only here: the synthetic stage is optional for every other metric
        from ..synthetic_recovery import recovery_report

        rows_out = []
        for f, n in zip(folders, names):
            try:
                rows_out.append({"dictionary": n, "report": recovery_report(f)})
            except UserError as e:
                rows_out.append({"dictionary": n, "report": None, "error": str(e)})
        done("synthetic", {"metric": "synthetic", "dictionaries": rows_out}, t0)
    wall["total"] = time.time() - t_start
    infos = [DictionaryInfo(d.name, d.kind, d.site, d.d_lat, d.source, l0.get(d.name)) for d in dicts]
    manifest = asdict(BenchManifest(infos, site, prov.model_spec, prov.corpus, metrics, wall, notes))
    plot = bench_plot(out_dir / "bench.png", results, manifest["dictionaries"])
    write_json(out_dir / "bench.json", manifest)
    write_reports(out_dir, manifest, results, plot)
    if not quiet:
        print(f"bench: report {out_dir / 'report.md'} ({wall['total']:.0f} s)")
    return results
