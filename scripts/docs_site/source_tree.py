"""MkDocs hook, listed first: the hooks after it import `saelab` from the working tree that holds mkdocs.yml.

The `mkdocs` command does not put the current folder on `sys.path`, and an installed saelab may be another
checkout (an editable install of a different tree); the reference pages must describe this one."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger(__name__)


def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    saelab = importlib.import_module("saelab")
    if root not in Path(saelab.__file__).resolve().parents:
        log.warning(f"saelab is imported from {saelab.__file__}, not from {root}: the reference pages describe it")
    return config
