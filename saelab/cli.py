"""The `saelab` command line: thin wrappers over the library, one subcommand per stage.

Subcommands live in saelab/commands/ (one module per group, each with `register`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .commands import COMMAND_MODULES, parse_args, show_defaults
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saelab",
        description="Sparse dictionaries for language models: train, evaluate, interpret, steer, compare.",
    )
    p.add_argument("--version", action="version", version=f"saelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)  # positionals after a multi-value option are not swallowed
    try:
        threads = getattr(args, "threads", None)
        if threads is not None and threads < 1:
            raise UserError(f"option --threads must be >= 1, got {threads}")
        if threads:  # every command with --threads: set once, here
            import torch

            torch.set_num_threads(threads)
        args.fn(args)
    except UserError as e:
        print(f"saelab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk in a write not made through storage.py (a log line, a third-party save)
        from .storage import DISK_FULL, disk_full_message

        if e.errno not in DISK_FULL:
            raise
        folder = os.path.dirname(e.filename) if isinstance(e.filename, str) else getattr(args, "out", None) or "."
        print(f"saelab: error: {disk_full_message(folder)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saelab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
