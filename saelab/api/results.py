"""What the stage functions (api/stages.py) return: typed views of the artefacts each stage wrote.

Every result is read back from the files on disk (run manifest, metrics.json, bench JSONs, an
interpretation run's JSONL records), so a result from Python and the folder the CLI writes for the same
config are the same numbers by construction. Where a table is natural, `to_pandas()` gives it; pandas
is imported only then (a clear error names the missing package; the rest of saelab does not need it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:  # pandas is optional: only `to_pandas` imports it
    import pandas

__all__ = ["BenchResult", "EvalResult", "InterpretationRun", "TrainResult"]


def _pandas():
    """The pandas module, or a one-line UserError saying how to get it."""
    try:
        import pandas
    except ImportError as e:
        raise UserError("to_pandas() needs pandas: `pip install pandas` (the rest of saelab does not)") from e
    return pandas


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Scalars of a nested dict as one row: nested dicts joined with '.', lists left out (histograms, per-example
    predictions: not table cells)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class TrainResult:
    """A finished training run (`saelab train`): the run folder and what its manifest.json records.

    `dictionaries`: the saved dictionary folders (one per hookpoint x k / sparsity value x lr), each
    loadable with `saelab.load`. `metrics`: {dictionary name: its final smoothed training statistics}
    (fvu, l0, dead fraction, ... as in `train_log.jsonl`; fractions unitless, l0 in latents per token).
    `manifest`: the whole run manifest.json (config, data, tokens, wall time in s, tokens/s)."""

    out: Path
    dictionaries: list[Path]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def to_pandas(self) -> pandas.DataFrame:
        """One row per dictionary: `dictionary`, `folder`, then its final training statistics."""
        rows = [
            {"dictionary": name, "folder": rec.get("folder"), **_flat(rec.get("final", {}))}
            for name, rec in self.manifest.get("saes", {}).items()
        ]
        return _pandas().DataFrame(rows)

    def curves(self) -> pandas.DataFrame:
        """The training curves (train_log.jsonl): one row per logged point and dictionary: `tokens` (LM tokens
        seen), `steps`, `wall_s` (s), `dictionary`, then its smoothed statistics at that point."""
        from ..storage import read_jsonl

        rows = [
            {"tokens": rec["tokens"], "steps": rec["steps"], "wall_s": rec["wall_s"], "dictionary": name, **stats}
            for rec in read_jsonl(self.out / "train_log.jsonl")
            for name, stats in rec["saes"].items()
        ]
        return _pandas().DataFrame(rows)


@dataclass
class EvalResult:
    """What `saelab eval` wrote: one metrics file per dictionary (or one replacement_metrics.json).

    `files`: the metrics files; `records`: their JSON content, in the same order (provenance of the
    rows measured, wall time in s, `metrics`). `metrics`: each record's `metrics` block (fvu and
    cosine unitless, mse per element, l0 in latents per token, kl / ce in nats per token)."""

    files: list[Path]
    records: list[dict]

    @property
    def metrics(self) -> list[dict]:
        """The `metrics` block of each record (metrics.json), in `files` order."""
        return [r["metrics"] for r in self.records]

    def to_pandas(self) -> pandas.DataFrame:
        """One row per dictionary (`sae` then every scalar metric; nested ones as `later_fvu.<block>`;
        histograms left out); a replacement folder: one row per layer (`layer`, `fvu`, `l0`, ...)."""
        rows = []
        for rec in self.records:
            if "replacement" in rec:
                rows += [{"replacement": rec["replacement"], **_flat(layer)} for layer in rec["metrics"]["layers"]]
            else:
                rows.append({"sae": rec.get("sae"), **_flat(rec["metrics"])})
        return _pandas().DataFrame(rows)


@dataclass
class BenchResult:
    """A bench folder (`saelab bench`): each metric's JSON (`results`, as `<metric>.json` holds it),
    bench.json (`manifest`: the dictionaries compared, site, model, wall times in s) and the reports."""

    out: Path
    results: dict[str, dict]
    manifest: dict = field(default_factory=dict)

    @property
    def report(self) -> Path:
        """report.md of the bench folder (report.html and bench.png lie beside it)."""
        return self.out / "report.md"

    def to_pandas(self, metric: str | None = None) -> pandas.DataFrame:
        """`metric` given: its per-dictionary records (`dictionary` then that metric's scalars). None: one
        row per dictionary compared (`dictionary`, `kind`, `site`, `d_lat`, `l0`, `source`) with the scalar
        results of every metric as `<metric>.<key>` columns (a dictionary a metric skips: NaN)."""
        pd = _pandas()
        if metric is not None:
            if metric not in self.results:
                raise UserError(f"bench {self.out} has no metric {metric!r}; it holds {list(self.results)}")
            return pd.DataFrame([_flat(r) for r in self.results[metric].get("dictionaries", [])])
        rows = {
            d["name"]: {"dictionary": d["name"], **{k: v for k, v in d.items() if k != "name"}}
            for d in self.manifest.get("dictionaries", [])
        }
        for m, res in self.results.items():
            for r in res.get("dictionaries", []):
                name = r.get("dictionary")
                flat = {f"{m}.{k}": v for k, v in _flat(r).items() if k != "dictionary"}
                rows.setdefault(name, {"dictionary": name}).update(flat)
        return pd.DataFrame(list(rows.values()))


@dataclass
class InterpretationRun:
    """An interpretation run folder (`saelab explain` / `saelab score`).

    `explanations`: {latent: its latest explanations.jsonl record} (status ok | failed | skipped,
    explanation, example ids, fire count, max activation); `scores`: {scorer: {latent: its latest
    scores_<scorer>.jsonl record}} (ok, metrics such as auc / balanced_accuracy in [0, 1]);
    `scored`: {scorer: latents this `score` call scored} (empty after `explain`)."""

    path: Path
    manifest: dict
    explanations: dict[int, dict]
    scores: dict[str, dict[int, dict]]
    scored: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path, scored: dict[str, int] | None = None) -> InterpretationRun:
        """Read a run folder (interpret/records.py's reader, which checks the folder's kind)."""
        from ..interpret.records import load_run

        run = load_run(path)
        return cls(run.path, run.manifest, run.explanations, run.scores, dict(scored or {}))

    def to_pandas(self) -> pandas.DataFrame:
        """One row per explained latent: `latent`, `status`, `explanation`, `fire_count`, `max_activation`,
        then each scorer's metrics as `<scorer>.<metric>` (NaN where a latent was not scored)."""
        keep = ("latent", "status", "explanation", "error", "fire_count", "max_activation", "n_windows")
        rows = []
        for j in sorted(self.explanations):
            row = {k: self.explanations[j].get(k) for k in keep}
            for s, recs in sorted(self.scores.items()):
                if j in recs:
                    row[f"{s}.ok"] = recs[j].get("ok")
                    row |= {f"{s}.{k}": v for k, v in _flat(recs[j].get("metrics") or {}).items()}
            rows.append(row)
        return _pandas().DataFrame(rows)
