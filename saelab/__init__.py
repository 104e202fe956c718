"""saelab: sparse dictionary learning on language models.

Data flows text -> tokens -> activations -> dictionary (SAE) -> evaluation; each stage lives in
its own module (data, models, sae, train, evaluate) and writes its own artefact on disk.
"""

__version__ = "0.1.0"
