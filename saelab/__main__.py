"""`python -m saelab ...` = the `saelab` command (for machines where the package is on PYTHONPATH, not installed)."""

from .cli import main

raise SystemExit(main())
