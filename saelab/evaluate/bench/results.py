"""The typed schema of each metric's JSON (`<metric>.json` in the bench folder): dataclasses whose
`asdict` is the file, so report.md / report.html render exactly what the JSON holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METRICS = ("core", "probing", "absorption", "autointerp", "synthetic")
DEFAULT_METRICS = ("core", "probing", "absorption")


@dataclass
class DictionaryInfo:
    name: str
    kind: str  # sae | neurons | residual | pca | random
    site: str
    d_lat: int
    source: str
    l0: float | None  # mean active latents per token on the probing rows (None for dense bases: all)


@dataclass
class ProbeTask:
    task: str
    level: str  # sequence | token
    classes: list[str]
    n_train: int
    n_test: int
    accuracy: dict[str, float]  # k -> held-out accuracy (mean over one-vs-rest sub-tasks when multi-class)
    ceiling: float  # logistic regression on the dictionary's full site
    top_latents: dict[str, list[int]]  # class -> the 5 latents of largest class-mean difference (train split)


@dataclass
class ProbingResult:
    dictionary: str
    kind: str
    ks: list[int]
    tasks: list[ProbeTask]
    mean_accuracy: dict[str, float]  # k -> mean over tasks
    mean_ceiling: float


@dataclass
class LetterAbsorption:
    letter: str
    n_test: int  # test words of the letter that the probe classifies correctly
    split_features: int  # main latents chosen by k-sparse probing (> 1: the feature is split)
    main_latents: list[int]
    absorption_rate: float  # fraction of those words: main latents silent, another latent carries the direction
    absorption_fraction: float  # mean share of the probe-direction projection carried by non-main latents


@dataclass
class AbsorptionResult:
    dictionary: str
    kind: str
    applicable: bool  # False for dense bases (neurons, residual, PCA): no latent is ever silent
    mean_absorption_rate: float | None
    mean_absorption_fraction: float | None
    mean_split_features: float | None
    letters: list[LetterAbsorption] = field(default_factory=list)


@dataclass
class AbsorptionReport:
    probe_accuracy: float  # first-letter probe on the site, held-out words
    chance: float  # accuracy of always predicting the most frequent letter
    n_words: int
    letters: list[str]
    weak: bool  # the probe is too weak for the metric to mean much (accuracy < 0.5)
    dictionaries: list[AbsorptionResult]


@dataclass
class BenchManifest:
    dictionaries: list[DictionaryInfo]
    site: str
    model: str
    corpus: str
    metrics: list[str]
    wall_s: dict[str, float]  # metric -> seconds (and "load", "total")
    notes: list[str]


def to_json(obj) -> dict:
    return asdict(obj)
