"""The typed schema of `bench.json`, shared by every metric. Each metric's own JSON (`<metric>.json`)
is its module's business: the dataclasses there (probing.ProbingResult, absorption.AbsorptionReport)
or the dict its `compute` returns; report.md / report.html render exactly what the JSON holds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DictionaryInfo:
    name: str
    kind: str  # sae | neurons | residual | pca | random
    site: str
    d_lat: int
    source: str
    l0: float | None  # mean active latents per token on the probing rows (None for dense bases: all)


@dataclass
class BenchManifest:
    dictionaries: list[DictionaryInfo]
    site: str
    model: str
    corpus: str
    metrics: list[str]
    wall_s: dict[str, float]  # metric -> seconds (and "load", "total")
    notes: list[str]
