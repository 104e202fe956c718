"""Run folder records: one JSON line per latent, appended (and fsynced) as each latent completes.

RUN/manifest.json          what was run: cache, dictionary, latents, example config, explainer,
                           client, scorers and their settings, package versions, wall times
RUN/explanations.jsonl     one ExplanationRecord per latent (status ok | failed | skipped)
RUN/scores_SCORER.jsonl    one ScoreResult (scorers/base.py) per latent and scorer

A crash loses at most the latent in flight: a truncated last line is ignored when reading, and a
rerun skips every latent that already has a record. `load_run(run).latent(j)` merges the files into
one record per latent: the explanation, its example ids and every scorer's result.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..storage import read_json, read_jsonl  # noqa: F401  (read_jsonl: part of this module's API)

RECORD_VERSION = 1
EXPLANATIONS = "explanations.jsonl"
EXAMPLES = "examples.jsonl"   # the examples of each explained latent, so scoring needs no cache


def scores_path(run: Path, scorer: str) -> Path:
    return Path(run) / f"scores_{scorer}.jsonl"


@dataclass
class ExplanationRecord:
    latent: int
    status: str                          # ok | failed | skipped
    explanation: str | None = None
    error: str | None = None             # why it failed / was skipped
    raw: str | None = None               # the explainer's raw reply (kept for failures too)
    explainer: str = ""
    example_ids: dict = field(default_factory=dict)  # {explain|activating|random|hard: ["row:start", ...]}
    n_windows: int = 0                   # activating windows in the cache
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
        if not (self.path / "manifest.json").exists():
            raise UserError(f"{self.path} is not an interpretation run (no manifest.json); make one with `saelab explain`")
        self.manifest = read_json(self.path / "manifest.json")
        self.explanations = by_latent(read_jsonl(self.path / EXPLANATIONS))
        self.scores: dict[str, dict[int, dict]] = {}
        for p in sorted(self.path.glob("scores_*.jsonl")):
            self.scores[p.stem.removeprefix("scores_")] = by_latent(read_jsonl(p))

    @property
    def name(self) -> str:
        return self.manifest.get("label") or self.path.name

    def latent(self, j: int) -> dict:
        rec = dict(self.explanations.get(j, {"latent": j, "status": "missing"}))
        rec["scores"] = {s: recs[j] for s, recs in self.scores.items() if j in recs}
        return rec


def load_run(path) -> Run:
    return Run(Path(path))
