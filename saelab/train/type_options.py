"""A dictionary type's own options as TrainConfig fields: every registered type's `Options` dataclass
(sae/kind.py) is composed into TrainConfig (config.py) by `with_type_options`, one flat field per option,
so the flags, the `--config` keys, manifest.json and the resume identity stay what they were when they
were written out by hand. `type_option_owners` says which --arch declares each such field; the config
checks (config_checks.py) refuse a value set for another --arch."""

from __future__ import annotations

import dataclasses
import typing

from ..sae import ARCHITECTURES


def type_option_owners() -> dict[str, str]:
    """TrainConfig field -> the --arch whose Options declare it (every registered type's)."""
    owners: dict[str, str] = {}
    for arch, kind in ARCHITECTURES.items():
        for f in dataclasses.fields(kind.Options):
            if f.name in owners:
                raise TypeError(f"option {f.name!r} is declared by both {owners[f.name]} and {arch}")
            owners[f.name] = arch
    return owners


def with_type_options(after: str):
    """Class decorator (under @dataclass): insert every registered type's option fields after field `after`."""

    def add(cls):
        own = cls.__dict__.get("__annotations__", {})
        fields: dict[str, tuple] = {}
        for name, arch in type_option_owners().items():
            options = ARCHITECTURES[arch].Options
            f = next(f for f in dataclasses.fields(options) if f.name == name)
            if name in own:
                raise TypeError(f"{arch} option {name!r} clashes with TrainConfig.{name}")
            fields[name] = (typing.get_type_hints(options)[name], f)
        annotations = {}
        for name, t in own.items():
            annotations[name] = t
            if name == after:
                for n, (hint, f) in fields.items():
                    annotations[n] = hint
                    setattr(
                        cls,
                        n,
                        dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
                    )
        cls.__annotations__ = annotations
        return cls

    return add


def option_default(f: dataclasses.Field):
    """A field's default value (a fresh one from its factory)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
