"""The public Python API: what `saelab.<name>` re-exports (saelab/__init__.py lists the names).

Each module here is a thin layer over the stage that owns the work (sae/, models.py, features/, ...):
dictionary.py (`load`, `Dictionary`, `Reconstruction`), model.py (`Model`, `RunOutput`), stages.py (`train`,
`evaluate`, `bench`, `cache_activations`, `cache_features`, `explain`, `score` over their config dataclasses,
which the commands build), results.py (`TrainResult`, `EvalResult`, `BenchResult`, `InterpretationRun`),
latents.py (`LatentCache`, `TopExample`, `LogitEffects`). Anything
not in `saelab.__all__` is private and may change between versions.
"""
