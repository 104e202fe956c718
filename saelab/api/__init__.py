"""The public Python API: what `saelab.<name>` re-exports (saelab/__init__.py lists the names).

Each module here is a thin layer over the stage that owns the work (sae/, models.py, features/, ...):
dictionary.py (`load`, `Dictionary`, `Reconstruction`), model.py (`Model`, `RunOutput`). Anything
not in `saelab.__all__` is private and may change between versions.
"""
