"""saelab: sparse dictionary learning on language models.

Data flows text -> tokens -> activations -> dictionary (SAE) -> evaluation; each stage lives in
its own module (data, models, sae, train, evaluate) and writes its own artefact on disk.

The public Python API is the names in `__all__` (`saelab.load`, `saelab.Model`, ...), defined in
saelab/api/ and imported on first use, so `import saelab` stays cheap (no torch). Everything else is
private and may change between versions. For example:

    sae = saelab.load("runs/quickstart")              # an SAE folder, a run folder, a release, a hub id
    model = saelab.Model.load(sae)                    # the model it was trained on
    out = model.run(["The cat sat on the mat"], features=[sae])   # out.features[sae.name]: [1, seq, d_sae]
    with model.steer(sae, clamp={123: 8.0}):          # latent 123 held at 8.0 after the first position
        print(model.generate("The cat sat", max_new_tokens=20))
"""

import importlib as _importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module defining it (imported when the name is first used)
_PUBLIC: dict[str, str] = {
    "load": "saelab.api.dictionary",
    "Dictionary": "saelab.api.dictionary",
    "Reconstruction": "saelab.api.dictionary",
    "Model": "saelab.api.model",
    "RunOutput": "saelab.api.model",
}

__all__ = list(_PUBLIC)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api.dictionary import Dictionary, Reconstruction, load  # noqa: F401
    from .api.model import Model, RunOutput  # noqa: F401


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'saelab' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*_PUBLIC, "__version__"])  # the public names only (tab completion in notebooks)
