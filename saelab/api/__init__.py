"""The public Python API of saelab. Import its names from `saelab` itself (`saelab.train`, `saelab.load`, ...):
`saelab/__init__.py` re-exports them lazily. Everything not in `saelab.__all__` is private and may change."""
