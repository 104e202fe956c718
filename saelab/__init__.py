"""saelab: sparse dictionary learning on language models.

Data flows text -> tokens -> activations -> dictionary (SAE) -> evaluation; each stage lives in
its own module (data, models, sae, train, evaluate) and writes its own artefact on disk.

The public Python API is the names in `__all__` (`saelab.load`, `saelab.Model`, ...), defined in
saelab/api/ and imported on first use, so `import saelab` stays cheap (no torch). Everything else is
private and may change between versions. `saelab.train`, `saelab.evaluate`, `saelab.bench`,
`saelab.cache_features`, `saelab.explain` and `saelab.score` run the stages over the config dataclasses
the commands are built from (api/stages.py). For example:

    sae = saelab.load("runs/quickstart")              # an SAE folder, a run folder, a release, a hub id
    model = saelab.Model.load(sae)                    # the model it was trained on
    out = model.run(["The cat sat on the mat"], features=[sae])   # out.features[sae.name]: [1, seq, d_sae]
    with model.steer(sae, clamp={123: 8.0}):          # latent 123 held at 8.0 after the first position
        print(model.generate("The cat sat", max_new_tokens=20))
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from . import evaluate as _evaluate_package  # docstring-only packages: nothing heavy loads (see _StageAndPackage)
from . import train as _train_package

__version__ = "0.1.0"

# public name -> the module defining it (imported when the name is first used)
_PUBLIC: dict[str, str] = {
    "load": "saelab.api.dictionary",
    "Dictionary": "saelab.api.dictionary",
    "Reconstruction": "saelab.api.dictionary",
    "Model": "saelab.api.model",
    "RunOutput": "saelab.api.model",
    # the stages over their config dataclasses (api/stages.py), their results (api/results.py, api/latents.py)
    "train": "saelab.api.stages",
    "evaluate": "saelab.api.stages",
    "bench": "saelab.api.stages",
    "cache_activations": "saelab.api.stages",
    "cache_features": "saelab.api.stages",
    "explain": "saelab.api.stages",
    "score": "saelab.api.stages",
    "TrainConfig": "saelab.api.stages",
    "CacheConfig": "saelab.api.stages",
    "EvalConfig": "saelab.api.stages",
    "EvalE2EConfig": "saelab.api.stages",
    "BenchConfig": "saelab.api.stages",
    "LatentCacheConfig": "saelab.api.stages",
    "ExplainConfig": "saelab.api.stages",
    "ScoreConfig": "saelab.api.stages",
    "TrainResult": "saelab.api.results",
    "EvalResult": "saelab.api.results",
    "BenchResult": "saelab.api.results",
    "InterpretationRun": "saelab.api.results",
    "LatentCache": "saelab.api.latents",
    "TopExample": "saelab.api.latents",
    "LogitEffects": "saelab.api.latents",
    # attribution graphs through a replacement model (api/circuits.py)
    "attribute": "saelab.api.circuits",
    "validate_attribution": "saelab.api.circuits",
    "AttributeConfig": "saelab.api.circuits",
    "Graph": "saelab.api.circuits",
}

__all__ = list(_PUBLIC)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api.circuits import AttributeConfig, Graph, attribute, validate_attribution  # noqa: F401
    from .api.dictionary import Dictionary, Reconstruction, load  # noqa: F401
    from .api.latents import LatentCache, LogitEffects, TopExample  # noqa: F401
    from .api.model import Model, RunOutput  # noqa: F401
    from .api.results import BenchResult, EvalResult, InterpretationRun, TrainResult  # noqa: F401
    from .api.stages import (  # noqa: F401
        BenchConfig,
        CacheConfig,
        EvalConfig,
        EvalE2EConfig,
        ExplainConfig,
        LatentCacheConfig,
        ScoreConfig,
        TrainConfig,
        bench,
        cache_activations,
        cache_features,
        evaluate,
        explain,
        score,
        train,
    )


class _StageAndPackage:
    """`saelab.train` and `saelab.evaluate` name both a public stage function and an internal package
    (saelab/train/, saelab/evaluate/). Calling this runs the stage (api/stages.py; its docstring,
    signature and annotations are the function's); any other attribute is the package's, so
    `import saelab.train.loop as loop` keeps working. The packages are imported above, before this
    takes their names here, so a later submodule import never rebinds the name to the package."""

    __slots__ = ("_stage", "_package")

    def __init__(self, stage: str, package):
        self._stage, self._package = stage, package

    @property
    def __wrapped__(self):
        return getattr(_importlib.import_module("saelab.api.stages"), self._stage)

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    @property
    def __doc__(self) -> str | None:  # the stage's docstring
        return self.__wrapped__.__doc__

    @property
    def __annotations__(self) -> dict:
        return self.__wrapped__.__annotations__

    @property
    def __signature__(self):
        import inspect

        return inspect.signature(self.__wrapped__)

    def __getattr__(self, name: str):
        return getattr(self._package, name)

    def __repr__(self) -> str:
        return f"<function saelab.{self._stage} (stage; the package is saelab/{self._stage}/)>"


if not TYPE_CHECKING:
    train = _StageAndPackage("train", _train_package)
    evaluate = _StageAndPackage("evaluate", _evaluate_package)


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'saelab' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*_PUBLIC, "__version__"])  # the public names only (tab completion in notebooks)
