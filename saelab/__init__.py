"""saelab: sparse dictionary learning on language models.

Data flows text -> tokens -> activations -> dictionary (SAE) -> evaluation; each stage lives in
its own module (data, models, sae, train, evaluate) and writes its own artefact on disk.

The public Python API is the names in `__all__`, defined in saelab/api/ and imported here lazily (on
first use), so `import saelab` and `saelab --help` stay cheap: torch loads only when a name is used.
Everything else is private and may change.
"""

from __future__ import annotations

import importlib

from . import evaluate as _evaluate_package  # docstring-only packages: nothing heavy loads
from . import train as _train_package

__version__ = "0.1.0"

# public name -> the module of saelab/api/ that defines it
_PUBLIC = {
    # stages over their config dataclasses (api/stages.py) and their results (api/results.py, api/latents.py)
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
}

__all__ = ["__version__", *_PUBLIC]


class _StageAndPackage:
    """`saelab.train` and `saelab.evaluate` name both a public stage function and an internal package
    (saelab/train/, saelab/evaluate/). Calling this runs the stage (api/stages.py; its docstring,
    signature and annotations are the function's); any other attribute is the package's, so
    `import saelab.train.loop as loop` keeps working. The packages are imported above, before this
    replaces them here, so a later submodule import never rebinds the name."""

    __slots__ = ("_stage", "_package")

    def __init__(self, stage: str, package):
        self._stage, self._package = stage, package

    @property
    def __wrapped__(self):
        return getattr(importlib.import_module("saelab.api.stages"), self._stage)

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    @property
    def __doc__(self) -> str | None:  # noqa: PLE0307 - the stage's docstring
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


train = _StageAndPackage("train", _train_package)
evaluate = _StageAndPackage("evaluate", _evaluate_package)


def __getattr__(name: str):
    """A public name, imported from its module on first use (then cached in this module's globals)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'saelab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
