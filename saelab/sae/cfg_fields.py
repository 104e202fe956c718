"""Typed reads of a cfg.json that saelab did not necessarily write (SAELens, sparsify, or one edited by hand):
each value is checked once, where it is read, and a wrong one is a UserError naming the file and the field
(`metadata.context_size must be an integer, got 'abc'`), never a ValueError / KeyError further on."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..sinks import SinkConfig

_MISSING = object()


def _show(v) -> str:
    r = repr(v)
    return f"{r} ({type(v).__name__})" if len(r) <= 60 else f"a {type(v).__name__}"


def need_object(path: Path, value, name: str = "", optional: bool = False) -> dict:
    """A JSON object (a dict); with `optional`, None / missing reads as {}."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        where = f"{path}: {name}" if name else f"{path}"
        raise UserError(f"{where} must be a JSON object, got {_show(value)}")
    return value


def cfg_int(path: Path, d: dict, key: str, name: str = "", default=_MISSING, minimum: int | None = 1):
    """d[key] as an int (an integral float such as 64.0 is accepted); `default` when missing or null."""
    name = name or key
    v = d.get(key)
    if v is None:
        if default is _MISSING:
            raise UserError(f"{path} lacks `{name}`")
        return default
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        raise UserError(f"{path}: {name} must be an integer, got {_show(v)}")
    if minimum is not None and v < minimum:
        raise UserError(f"{path}: {name} must be >= {minimum}, got {v}")
    return int(v)


def cfg_float(path: Path, d: dict, key: str, name: str = "", default=_MISSING, lo=None, hi=None):
    """d[key] as a finite float in the open interval (lo, hi) when given; `default` when missing or null."""
    name = name or key
    v = d.get(key)
    if v is None:
        if default is _MISSING:
            raise UserError(f"{path} lacks `{name}`")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise UserError(f"{path}: {name} must be a number, got {_show(v)}")
    if (lo is not None and not v > lo) or (hi is not None and not v < hi):
        raise UserError(f"{path}: {name} must be between {lo} and {hi}, got {v}")
    return float(v)


def _typed(path: Path, d: dict, key: str, name: str, default, kind: type, what: str):
    """d[key] when it is a `kind`; `default` when missing or null; else one line naming the field."""
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, kind):
        raise UserError(f"{path}: {name or key} must be {what}, got {_show(v)}")
    return v


def cfg_str(path: Path, d: dict, key: str, name: str = "", default=None):
    """d[key] as a string; `default` when missing or null."""
    return _typed(path, d, key, name, default, str, "a string")


def cfg_bool(path: Path, d: dict, key: str, name: str = "", default=None):
    """d[key] as a boolean; `default` when missing or null."""
    return _typed(path, d, key, name, default, bool, "true or false")


def cfg_keys(path: Path, d: dict, known, name: str) -> None:
    """Refuse keys of `d` outside `known` (a typo'd key would be silently ignored otherwise)."""
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} in {name}; known: {', '.join(sorted(known))}")


def sink_config(path, d) -> SinkConfig:
    """saelab.sink of a cfg.json: known keys of the right types only."""
    d = need_object(path, d, "saelab.sink", optional=True)
    cfg_keys(path, d, SinkConfig.__dataclass_fields__, "saelab.sink")
    return SinkConfig(
        first_positions=cfg_int(path, d, "first_positions", "saelab.sink.first_positions", 1, minimum=0),
        mask_special=cfg_bool(path, d, "mask_special", "saelab.sink.mask_special", True),
        norm_factor=cfg_float(path, d, "norm_factor", "saelab.sink.norm_factor", 5.0),
    )
