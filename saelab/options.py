"""Turn a config dataclass into argparse options and read option values from a JSON or TOML config
file (`--config`). Each field carries its help text: declare it with `opt(default, help)`. The checks of
the values (types, ranges, device, dtype) are in option_checks.py; `build_config` runs them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

import tomllib

from .errors import UserError
from .option_checks import DTYPES, check_types, flag

_NO_DEFAULT = dataclasses.MISSING


def opt(
    default=_NO_DEFAULT,
    help: str = "",
    *,
    default_factory=_NO_DEFAULT,
    positional: bool = False,
    choices=None,
    metavar: str | None = None,
    old_spellings: tuple[str, ...] = (),
    flag: str | None = None,
    shown: str | None = None,
    shared: str | None = None,
):
    """A config field with its command-line help: `x: int = opt(3, "what x is")`,
    `xs: list[int] = opt(default_factory=lambda: [1], help="...")`, `out: str = opt(help="...")` (required).

    The keywords shape only the command line (see add_dataclass_options): `positional` (a plain argument,
    not --x: a list takes one or more, an optional scalar may be left out), `choices`, `metavar`,
    `old_spellings` (earlier flag names that still work, with a notice: OldSpelling), `flag` (the option's
    name when it is not --field-name: a field whose name means something else in other commands, e.g.
    TrainConfig.latents, a dictionary size, is --dict-size, since --latents elsewhere lists latent ids), `shown` (what the
    default means, in --help, when the value itself does not say it: `opt(None, "...", shown="FIRST/pareto")`),
    `shared` (the name of the shared declaration below that made the field: tests check they agree)."""
    if not help:
        raise ValueError("opt() needs a help text")
    extra = {
        "positional": positional,
        "choices": choices and tuple(choices),
        "metavar": metavar,
        "old_spellings": tuple(old_spellings),
        "flag": flag,
        "shown": shown,
        "shared": shared,
    }
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={"help": help} | {k: v for k, v in extra.items() if v},
    )


# ---------------------------------------------------------------- options every stage shares, declared once
# A stage's config dataclass writes `threads: int | None = threads_option()`; the flag, its default and its
# help are then the same in every command (and in the Python API, which takes the same dataclasses).
MODEL_HELP = "embedded | local folder | .gguf | hub id"
CORPUS_HELP = "builtin | file/folder | .npy | hf:NAME"


def out_option(what: str = "output folder", shown: str | None = None):
    """--out, required: `what` says what the folder holds. With `shown` it is optional (default None, which
    means what `shown` says, e.g. "metrics.json inside each SAE folder")."""
    if shown is not None:
        return opt(None, what, shown=shown, shared="out")
    return opt(help=what, shared="out")


def overwrite_option(what: str = "an existing output folder"):
    return opt(False, f"replace {what}", shared="overwrite")


def threads_option():
    return opt(None, "torch CPU threads, set once for the whole command (none: torch's choice)", shared="threads")


def device_option():
    return opt("cpu", "cpu | cuda | cuda:N | mps", shared="device")


def dtype_option():
    return opt(
        "float32",
        "the LM's precision: float32 | bfloat16 | float16; the dictionary stays float32",
        choices=DTYPES,
        shared="dtype",
    )  # DTYPES: option_checks.py, with check_dtype


def model_option(default: str | None = "embedded", shown: str | None = None):
    """--model; a stage that reads the model from an SAE folder declares `model_option(None, shown="the
    one recorded in the SAE folder")`: the same flag and help, an override."""
    return opt(default, MODEL_HELP, shown=shown, shared="model")


def corpus_option(default: str | None = "builtin", shown: str | None = None):
    return opt(default, CORPUS_HELP, shown=shown, shared="corpus")


# ---------------------------------------------------------------- grammar shared by the option values
class OldSpelling(argparse._StoreAction):
    """A stored option whose later option strings are old spellings: they still work and print a
    one-line notice naming the new one (`add_argument("--tokens", "--stats-tokens", action=OldSpelling)`;
    a config field: `opt(..., old_spellings=("--stats-tokens",))`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string != self.option_strings[0]:
            print(f"saelab: {option_string} is an old spelling; use {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


LATENTS_HELP = "latent ids: ranges and lists, `0-9,12` or `0 1 2` (both accepted)"


def latent_list(values, d_sae: int | None = None) -> list[int] | None:
    """The one latent-list syntax of every command: `--latents 0-9,12` and `--latents 0 1 2` (and a mix)
    -> sorted distinct ids (None -> None: the command's default); checked against d_sae when given.
    A config field holding latent ids is `list[str] | None` (as typed) and its stage calls this."""
    if not values:
        return None
    text = ",".join([values] if isinstance(values, str) else map(str, values))
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
        a, dash, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if dash else int(a)
        except ValueError:
            raise UserError(f"--latents {part!r}: expected ids and ranges like 0-9,12 or 0 1 2") from None
        if lo > hi:
            raise UserError(f"--latents {part!r}: a range runs low-high")
        out.update(range(lo, hi + 1))
    if not out:
        raise UserError("--latents: no latent ids given")
    bad = [i for i in sorted(out) if d_sae is not None and not 0 <= i < d_sae]
    if bad:
        raise UserError(f"--latents: {bad[:5]} outside 0..{d_sae - 1}")
    return sorted(out)


def _show(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return str(v)


def field_default(f: dataclasses.Field):
    """A dataclass field's default value (a fresh one from its factory), or _NO_DEFAULT when required."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One argparse option per field of `cls` (`--field-name`, or a plain argument for `positional`
    fields); every option's default is None, so build_config can tell "not given" from a value. Each
    action remembers its field as `action.config_field` = (cls, field name): tests/test_command_options.py."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        t = hints[f.name]
        if typing.get_origin(t) in (typing.Union, types.UnionType):  # Optional[X] -> X
            t = next(a for a in typing.get_args(t) if a is not type(None))
        origin, args = typing.get_origin(t), typing.get_args(t)
        default = field_default(f)
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: declare it with opt(default, help)")
        m = f.metadata
        shown = m.get("shown") or _show(default)
        kw = {k: m[k] for k in ("choices", "metavar") if k in m}
        if m.get("positional"):  # a plain argument: its help says itself what leaving it out means
            h = m["help"].replace("%", "%%")
            if origin is list:
                kw |= {"nargs": "+" if default is _NO_DEFAULT else "*", "type": args[0]}
            else:
                kw |= {"type": t} | ({} if default is _NO_DEFAULT else {"nargs": "?"})
            action = parser.add_argument(f.name, default=None, help=h, **kw)
            action.config_field = (cls, f.name)
            continue
        h = m["help"] + (" (required)" if default is _NO_DEFAULT else f" (default: {shown})")
        h = h.replace("%", "%%")  # argparse formats help with %
        names = [flag(f.name, cls), *m.get("old_spellings", ())]
        if "flag" in m and "metavar" not in kw:  # --dict-size DICT_SIZE, not the field's LATENTS
            kw["metavar"] = _flag_key(f).upper()
        if len(names) > 1:
            kw["action"] = OldSpelling  # the later spellings still work, with a notice
        if t is bool:
            action = parser.add_argument(
                *names, action=argparse.BooleanOptionalAction, default=None, help=h, dest=f.name
            )
        elif origin is list:
            action = parser.add_argument(*names, nargs="+", type=args[0], default=None, help=h, dest=f.name, **kw)
        else:
            action = parser.add_argument(*names, type=t, default=None, help=h, dest=f.name, **kw)
        action.config_field = (cls, f.name)


def _flag_key(f: dataclasses.Field) -> str | None:
    """The config-file key of a field declared with its own flag (`dict_size` for --dict-size), else None."""
    return f.metadata["flag"].removeprefix("--").replace("-", "_") if "flag" in f.metadata else None


def config_keys(cls) -> set[str]:
    """Every key a config file may hold for `cls`: its field names and the keys of their own flags."""
    return {f.name for f in dataclasses.fields(cls)} | {k for f in dataclasses.fields(cls) if (k := _flag_key(f))}


def add_config_command(sub, name: str, cls, fn, help: str, description: str | None = None):
    """A subcommand whose options are the fields of `cls`, plus `--config FILE` (see build_config)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help="JSON or TOML file with option values (command line wins; default: none)")
    add_dataclass_options(p, cls)
    p.set_defaults(fn=fn)
    return p


def build_config(cls, ns: argparse.Namespace, config_file: str | None, other_keys=(), **fixed):
    """Defaults < config file < command line; then every field is checked by type (`check_types`) and
    range (the class's `validate`), so a bad value is a one-line UserError before any model loads.
    `other_keys`: keys of the config file that belong to another dataclass of the same command (sweep:
    its own options next to the training options); they are left to that one."""
    values: dict = {}
    if config_file:
        p = Path(config_file)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist" if not p.exists() else f"config file {p} is not a file")
        try:
            values = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {p} is not valid: {e}") from e
        if not isinstance(values, dict):
            raise UserError(f"config file {p} must hold an object of option values, not a {type(values).__name__}")
        for f in dataclasses.fields(cls):  # a field with its own flag takes that name as a key too: dict_size
            alias = _flag_key(f)
            if alias in values:
                values[f.name] = values.pop(alias)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names - set(other_keys)
        values = {k: v for k, v in values.items() if k in names}
        if unknown:
            raise UserError(f"config file {p} has unknown keys: {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):
        v = getattr(ns, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update({k: v for k, v in fixed.items() if v is not None})
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"missing required option(s): {', '.join(flag(n, cls) for n in missing)}")
    cfg = cls(**values)
    check_types(cfg)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg
