"""Turn a config dataclass into argparse options and read option values from a JSON or TOML config
file (`--config`). Each field carries its help text: declare it with `opt(default, help)`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import tomllib
import typing
from pathlib import Path

from .errors import UserError

_NO_DEFAULT = dataclasses.MISSING
THREADS_HELP = "torch CPU threads, set once for the whole command (default: torch's choice)"


def opt(default=_NO_DEFAULT, help: str = "", *, default_factory=_NO_DEFAULT):
    """A config field with its command-line help: `x: int = opt(3, "what x is")`,
    `xs: list[int] = opt(default_factory=lambda: [1], help="...")`, `out: str = opt(help="...")` (required)."""
    if not help:
        raise ValueError("opt() needs a help text")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def _show(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return str(v)


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        t = hints[f.name]
        if typing.get_origin(t) in (typing.Union, types.UnionType):  # Optional[X] -> X
            t = next(a for a in typing.get_args(t) if a is not type(None))
        origin, args = typing.get_origin(t), typing.get_args(t)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _NO_DEFAULT
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: declare it with opt(default, help)")
        h = f.metadata["help"] + (" (required)" if default is _NO_DEFAULT else f" (default: {_show(default)})")
        h = h.replace("%", "%%")  # argparse formats help with %
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif origin is list:
            parser.add_argument(flag, nargs="+", type=args[0], default=None, help=h)
        else:
            parser.add_argument(flag, type=t, default=None, help=h)


def add_config_command(sub, name: str, cls, fn, help: str, description: str | None = None):
    """A subcommand whose options are the fields of `cls`, plus `--config FILE` (see build_config)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help="JSON or TOML file with option values (command line wins; default: none)")
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
