"""Turn a config dataclass into argparse options (help text from the field's trailing comment)
and read option defaults from a JSON or TOML config file (`--config`)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import tomllib
import typing
from pathlib import Path

from .errors import UserError


def _field_help(cls) -> dict[str, str]:
    src = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.*)$", src, re.M)}


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        opt = "--" + f.name.replace("_", "-")
        t = hints[f.name]
        if typing.get_origin(t) in (typing.Union, types.UnionType):  # Optional[X] -> X
            t = next(a for a in typing.get_args(t) if a is not type(None))
        origin, args = typing.get_origin(t), typing.get_args(t)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        h = helps.get(f.name, "") + (" (required)" if default == "required" else f" (default: {default})")
        if t is bool:
            parser.add_argument(opt, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif origin is list:
            parser.add_argument(opt, nargs="+", type=args[0], default=None, help=h)
        else:
            parser.add_argument(opt, type=t, default=None, help=h)


def add_config_command(sub, name: str, cls, fn, help: str, description: str | None = None):
    """A subcommand whose options are the fields of `cls`, plus `--config FILE` (see build_config)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help="JSON or TOML file with option values (command line wins)")
    add_dataclass_options(p, cls)
    p.set_defaults(fn=fn)
    return p


def build_config(cls, ns: argparse.Namespace, config_file: str | None, **fixed):
    """Defaults < config file < command line."""
    values: dict = {}
    if config_file:
        p = Path(config_file)
        if not p.exists():
            raise UserError(f"config file {p} does not exist")
        try:
            values = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"config file {p} is not valid: {e}") from e
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise UserError(f"config file {p} has unknown keys: {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):
        v = getattr(ns, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update({k: v for k, v in fixed.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as e:
        raise UserError(f"incomplete configuration: {e}") from e
