"""`saelab bench` as its steps (`bench(BenchConfig)`): check the options (config.py) and the inputs
(the task file, the folders agree on site and model, the output folder) before any model loads ->
the model and rows once (`open_shared_data`) and the dictionaries (SAE folders + baselines) -> each
metric in turn, its JSON written as soon as it is done -> bench.json, report.md/html and bench.png."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from ...models import collect_activations
from ...out_folder import BENCH_REPORT, open_out
from ...sae.folder import open_sae, open_shared_data, shared_provenance, unique_names
from ...sinks import excluded_positions, special_ids
from ...storage import write_json
from ..metrics import EvalBudget, batches, measure
from ..results import DESCRIPTIONS
from . import absorption as ab
from .config import BenchConfig
from .dictionaries import neuron_dictionary, pca_dictionary, random_dictionary, residual_dictionary, sae_dictionary
from .encode import encode_task
from .plots import bench_plot
from .probing import KS, probe_task, summarise
from .report import write_reports
from .results import AbsorptionReport, AbsorptionResult, BenchManifest, DictionaryInfo
from .task_files import file_task, read_task_file
from .tasks import Task, builtin_tasks, split_rows

NEEDS_MODEL = {"core", "probing", "absorption"}
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


def _words_task(tokenizer, seed: int, scale: float) -> tuple[Task, list[str]]:
    ids, labels, letters = ab.vocabulary_words(tokenizer, seed, max(10, int(ab.PER_LETTER * scale)))
    if len(letters) < 2:
        raise UserError("absorption: the tokenizer has too few word tokens (space + 3 letters) per first letter")
    n = len(ids)
    rows = np.stack(
        [np.full(n, tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[0]), np.asarray(ids)], 1
    ).astype(np.int64)
    return Task(
        "first_letter",
        "token",
        letters,
        "first letter of a word token",
        rows,
        np.full(n, 2),
        np.asarray(labels),
        np.arange(n),
        np.ones(n, dtype=np.int64),
        split_rows(n, seed),
    ), letters


def run_absorption(lm, dicts, site: str, sink, cfg: BenchConfig) -> AbsorptionReport:
    """The first-letter probe at `site`, then each sparse dictionary's absorption against it."""
    seed, device = cfg.seed, cfg.device
    task, letters = _words_task(lm.tokenizer, seed, cfg.task_scale)
    sparse = [d for d in dicts if d.sparse and d.directions is not None]
    enc = encode_task(
        lm.model, lm.tokenizer, task, sparse, site, sink, batch_rows=256, device=device, desc="bench: absorption"
    )
    y = torch.from_numpy(task.labels[enc.keep])
    tr = torch.from_numpy(task.train[enc.keep])
    x = enc.site[site]
    probe, acc = ab.first_letter_probe(x[tr], y[tr], x[~tr], y[~tr], len(letters))
    chance = float(np.bincount(y[~tr].numpy()).max() / max(int((~tr).sum()), 1))
    results = []
    for d in dicts:
        if d in sparse:
            z = enc.codes[d.name]
            results.append(
                ab.dictionary_absorption(
                    d.name,
                    d.kind,
                    probe,
                    letters,
                    x[~tr],
                    y[~tr],
                    z[tr],
                    y[tr],
                    z[~tr],
                    d.directions,
                    x[tr].mean(0),
                    seed,
                )
            )
        else:
            results.append(AbsorptionResult(d.name, d.kind, False, None, None, None))
    return AbsorptionReport(acc, chance, int(len(y)), letters, acc < 0.5, results)


@dataclass
class _Bench:
    """A bench after its checks: what to run, on which folders, and what is done so far."""

    cfg: BenchConfig
    metrics: list[str]
    out: Path
    folders: list
    names: list[str]  # the folders' names, unique: every result is keyed by them
    site: str
    prov: object  # the Provenance the folders agree on
    user_task: tuple | None
    quiet: bool
    dicts: list = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    l0: dict[str, float | None] = field(default_factory=dict)

    @property
    def sink(self):
        return self.folders[0].provenance.sink

    def done(self, name: str, obj: dict, t0: float) -> None:
        """A metric finished: its JSON is written now (a later failure keeps it)."""
        self.wall[name] = time.time() - t0
        self.results[name] = obj
        write_json(self.out / f"{name}.json", obj)
        if not self.quiet:
            print(f"bench: {name} done in {self.wall[name]:.0f} s -> {self.out / (name + '.json')}")


def _open_bench(cfg: BenchConfig, has_interp: bool, quiet: bool) -> _Bench:
    """Every check before the model: options, task file, output folder, folders on one site and model."""
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
    b = _Bench(cfg, metrics, out.prepare(), folders, names, site, prov, user_task, quiet)
    b.dicts = [sae_dictionary(f, n) for f, n in zip(folders, names)]
    return b


def _add_baselines(b: _Bench, lm, rows, fit_tokens: int) -> None:
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


def _core(b: _Bench, lm, rows) -> None:
    cfg, t0 = b.cfg, time.time()
    res, _ = measure(
        lm.model,
        lm.tokenizer,
        [(f.sae, f.provenance.sink) for f in b.folders],
        rows,
        EvalBudget(tokens=cfg.tokens, ce_tokens=cfg.ce_tokens),
        cfg.device,
    )
    for n, m in zip(b.names, res):
        b.l0[n] = m.l0
    b.done(
        "core",
        {
            "metric": "core",
            "tokens": cfg.tokens,
            "ce_tokens": cfg.ce_tokens,
            "dictionaries": [{"dictionary": n, **m.to_dict()} for n, m in zip(b.names, res)],
            "descriptions": DESCRIPTIONS,
        },
        t0,
    )


def _probing(b: _Bench, lm) -> None:
    cfg, t0 = b.cfg, time.time()
    tasks = builtin_tasks(lm.tokenizer, cfg.seed, cfg.task_scale)
    if b.user_task:
        tasks.append(file_task(lm.tokenizer, cfg.tasks, *b.user_task, seed=cfg.seed))
    per: dict[str, list] = {d.name: [] for d in b.dicts}
    for task in tasks:
        enc = encode_task(lm.model, lm.tokenizer, task, b.dicts, b.site, b.sink, device=cfg.device)
        for d, r in zip(b.dicts, probe_task(task, enc, b.dicts, KS, cfg.seed)):
            per[d.name].append(r)
        if task.level == "token":  # L0 of each dictionary on real tokens (dense bases: their width)
            for d in b.dicts:
                b.l0.setdefault(d.name, float((enc.codes[d.name] != 0).sum(1).float().mean()))
    b.done(
        "probing",
        {
            "metric": "probing",
            "ks": list(KS),
            "seed": cfg.seed,
            "tasks": [
                {"task": t.name, "level": t.level, "classes": t.classes, "description": t.description} for t in tasks
            ],
            "dictionaries": [asdict(summarise(d, per[d.name], KS)) for d in b.dicts],
        },
        t0,
    )


def _absorption(b: _Bench, lm) -> None:
    t0 = time.time()
    rep = run_absorption(lm, b.dicts, b.site, b.sink, b.cfg)
    if rep.weak:
        b.notes.append(
            f"absorption: the first-letter probe reaches only {rep.probe_accuracy:.2f} held-out "
            f"accuracy at {b.site}; the absorption numbers mean little there"
        )
    b.done("absorption", {"metric": "absorption", **asdict(rep)}, t0)


def _model_metrics(b: _Bench, fit_tokens: int) -> None:
    """core, probing and absorption: one model and one set of rows for all of them."""
    t0 = time.time()
    data = open_shared_data(b.folders, b.cfg.device)
    _add_baselines(b, data.lm, data.rows, fit_tokens)
    b.wall["load"] = time.time() - t0
    if "core" in b.metrics:
        _core(b, data.lm, data.rows)
    if "probing" in b.metrics:
        _probing(b, data.lm)
    if "absorption" in b.metrics:
        _absorption(b, data.lm)


def _synthetic(b: _Bench) -> None:
    t0 = time.time()
    # imported only here: the synthetic stage is optional for every other metric
    from ..synthetic_recovery import recovery_report

    rows_out = []
    for f, n in zip(b.folders, b.names):
        try:
            rows_out.append({"dictionary": n, "report": recovery_report(f)})
        except UserError as e:
            rows_out.append({"dictionary": n, "report": None, "error": str(e)})
    b.done("synthetic", {"metric": "synthetic", "dictionaries": rows_out}, t0)


def _summarise(b: _Bench, t_start: float) -> None:
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
    b = _open_bench(cfg, interp_summary is not None, quiet)
    if NEEDS_MODEL & set(b.metrics):
        _model_metrics(b, fit_tokens)
    if "autointerp" in b.metrics:
        b.done("autointerp", {"metric": "autointerp", **interp_summary}, time.time())
    if "synthetic" in b.metrics:
        _synthetic(b)
    _summarise(b, t_start)
    return b.results


def run_bench(
    sae_dirs: list[str],
    out: str,
    *,
    interp_summary: dict | None = None,
    quiet: bool = False,
    fit_tokens: int = FIT_TOKENS,
    **options,
) -> dict:
    """`bench` with the config's fields as keywords (`tasks_file=` and `core_tokens=` are --tasks and --tokens)."""
    for old, new in (("tasks_file", "tasks"), ("core_tokens", "tokens")):
        if old in options:
            options[new] = options.pop(old)
    cfg = BenchConfig(sae_dirs=[str(d) for d in sae_dirs], out=str(out), **options)
    return bench(cfg, interp_summary, quiet, fit_tokens)
