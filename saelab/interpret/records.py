"""Run folder records: one JSON line per latent, appended (and fsynced) as each latent completes.

RUN/manifest.json          what was run: cache, dictionary, latents, example config, explainer,
                           client, scorers and their settings, package versions, wall times
RUN/explanations.jsonl     one ExplanationRecord per latent (status ok | failed | skipped)
RUN/scores_SCORER.jsonl    one ScoreResult (scorers/base.py) per latent and scorer
RUN/validity_SCORER.jsonl  the same with another latent's explanation (`score --validity`, validity.py)

A crash loses at most the latent in flight: a truncated last line is ignored when reading, and a
rerun skips every latent that already has a record. `load_run(run).latent(j)` merges the files into
one record per latent: the explanation, its example ids and every scorer's result.

The views read runs only through `interpretations(path, sae_dir, d_sae)`: typed `Interpretation`s
(explanation + each scorer's headline metric with its chance level), after checking that the run
was made for that dictionary. examples.jsonl and scores_*.jsonl are never read as explanations.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..input_kind import require_kind
from ..out_folder import INTERPRETATION_RUN, kind_of
from ..storage import read_json, read_jsonl  # noqa: F401  (read_jsonl: part of this module's API)
from .scorers.base import PRIMARY
from .validity import run_validity

RECORD_VERSION = 1
EXPLANATIONS = "explanations.jsonl"
EXAMPLES = "examples.jsonl"  # the examples of each explained latent, so scoring needs no cache


def scores_path(run: Path, scorer: str) -> Path:
    return Path(run) / f"scores_{scorer}.jsonl"


@dataclass
class ExplanationRecord:
    latent: int
    status: str  # ok | failed | skipped
    explanation: str | None = None
    error: str | None = None  # why it failed / was skipped
    raw: str | None = None  # the explainer's raw reply (kept for failures too)
    explainer: str = ""
    example_ids: dict = field(default_factory=dict)  # {explain|activating|random|hard: ["row:start", ...]}
    n_windows: int = 0  # activating windows in the cache
    fire_count: int = 0
    max_activation: float = 0.0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def by_latent(records: list[dict]) -> dict[int, dict]:
    """Latest record per latent."""
    return {int(r["latent"]): r for r in records}


def repair_truncated(path: Path) -> None:
    """Drop a truncated last line before appending, so new records start on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)


class Run:
    def __init__(self, path: Path):
        self.path = Path(path)
        check_run_folder(self.path)
        self.manifest = read_json(self.path / "manifest.json")
        self.explanations = by_latent(read_jsonl(self.path / EXPLANATIONS))
        self.scores: dict[str, dict[int, dict]] = {}
        for p in sorted(self.path.glob("scores_*.jsonl")):
            self.scores[p.stem.removeprefix("scores_")] = by_latent(read_jsonl(p))
        self.validity: dict[str, dict[int, dict]] = {}  # scorer -> shuffled-explanation results
        for p in sorted(self.path.glob("validity_*.jsonl")):
            self.validity[p.stem.removeprefix("validity_")] = by_latent(read_jsonl(p))

    @property
    def name(self) -> str:
        return self.manifest.get("label") or self.path.name

    def latent(self, j: int) -> dict:
        rec = dict(self.explanations.get(j, {"latent": j, "status": "missing"}))
        rec["scores"] = {s: recs[j] for s, recs in self.scores.items() if j in recs}
        return rec


def check_run_folder(path: Path) -> None:
    """An interpretation run (or one written before runs recorded their kind: a manifest of no known kind);
    anything else, a training run above all, is refused naming what it holds."""
    held = kind_of(path)
    if not (path / "manifest.json").exists() or (held and held is not INTERPRETATION_RUN):
        require_kind(path, INTERPRETATION_RUN, "make one with `saelab explain CACHE --out RUN`")


def load_run(path) -> Run:
    return Run(Path(path))


CHANCE = {"auc": 0.5, "balanced_accuracy": 0.5, "score": 0.0}  # a metric's value for an explanation that says nothing


@dataclass
class ScoreSummary:
    """One scorer's result for one latent, as a page shows it."""

    scorer: str
    ok: bool
    metric: str | None = None  # the scorer's headline metric (scorers/base.py PRIMARY)
    value: float | None = None
    chance: float | None = None  # the metric's chance level (AUC 0.5)
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    validity: str | None = None  # the scorer's verdict on this run (`score --validity`): e.g. "at chance"


@dataclass
class Interpretation:
    """Everything an interpretation run holds about one latent."""

    latent: int
    status: str  # ok | failed | skipped | missing
    explanation: str | None = None
    explainer: str = ""
    scores: list[ScoreSummary] = field(default_factory=list)
    run: str = ""  # the run's label


def summarise_score(scorer: str, rec: dict, validity: str | None = None) -> ScoreSummary:
    metrics = {
        k: float(v)
        for k, v in (rec.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    metric = next((m for m in PRIMARY.get(scorer, []) + sorted(metrics) if m in metrics), None)
    return ScoreSummary(
        scorer,
        bool(rec.get("ok")) and metric is not None,
        metric,
        metrics.get(metric) if metric else None,
        CHANCE.get(metric),
        metrics,
        rec.get("error"),
        validity,
    )


def check_dictionary(run: Run, sae_dir: Path, d_sae: int) -> None:
    """UserError unless `run` explained the latents of the SAE in `sae_dir` (not neurons, not another SAE)."""
    info = run.manifest.get("dictionary_info") or {}
    made_for = f"{run.manifest.get('dictionary')!r} ({info.get('kind', '?')} from {info.get('source', '?')})"
    if info.get("kind") not in (None, "sae") or (info.get("d_sae") is not None and int(info["d_sae"]) != d_sae):
        raise UserError(f"interpretation run {run.path} was made for {made_for}, not for the SAE {sae_dir}")
    src = info.get("source")
    if src and Path(src).resolve() != Path(sae_dir).resolve():
        raise UserError(
            f"interpretation run {run.path} was made for {made_for}, not for the SAE {sae_dir}; "
            f"point --explanations at a run of this SAE"
        )


def _run_folder(path: Path) -> Path | None:
    if path.is_dir():
        return path
    if path.name == EXPLANATIONS and (path.parent / "manifest.json").exists():
        return path.parent
    return None


def interpretations(path, sae_dir: Path, d_sae: int) -> dict[int, Interpretation]:
    """latent -> Interpretation, from an interpretation run folder (checked against the SAE) or from
    one JSONL file of {"latent": j, "explanation": text} records (other keys ignored; a record with a
    `dictionary` naming another SAE folder is refused)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"explanations {path} do not exist")
    folder = _run_folder(path)
    if folder is not None:
        run = load_run(folder)
        check_dictionary(run, sae_dir, d_sae)
        verdict = {s: run_validity(run.scores[s], v, s)["verdict"] for s, v in run.validity.items() if s in run.scores}
        return {
            j: Interpretation(
                j,
                r.get("status", "missing"),
                r.get("explanation"),
                r.get("explainer", ""),
                [summarise_score(s, by[j], verdict.get(s)) for s, by in sorted(run.scores.items()) if j in by],
                run.name,
            )
            for j, r in run.explanations.items()
            if 0 <= j < d_sae
        }
    out = {}
    for rec in read_jsonl(path):
        if not isinstance(rec, dict):
            continue
        lat, text = rec.get("latent"), rec.get("explanation")
        if not isinstance(lat, int) or not 0 <= lat < d_sae or not isinstance(text, str):
            continue
        owner = rec.get("dictionary")
        if owner and owner != Path(sae_dir).name and Path(str(owner)).resolve() != Path(sae_dir).resolve():
            raise UserError(f"{path}: latent {lat} is explained for dictionary {owner!r}, not for {sae_dir}")
        out[lat] = Interpretation(lat, "ok", text, rec.get("explainer", ""), run=path.stem)
    return out
