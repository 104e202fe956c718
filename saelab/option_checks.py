"""The checks shared by the config dataclasses (options.py declares their fields and builds the command line
from them): field types (`check_types`), ranges (`need_*`), the device and the model precision (`check_device`,
`check_dtype`) and the device's memory. Each failure is a one-line UserError naming the option (`flag`), raised
before any model loads; kept apart so a config module's `validate` needs nothing of argparse."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing

from .errors import UserError


def flag(name: str, cfg=None) -> str:
    """The option that sets field `name`: --name, or, given its config `cfg` (a dataclass or an instance),
    the flag its field declares with `opt(..., flag=...)` (TrainConfig.latents, a dictionary size, is
    --dict-size: `--latents` elsewhere is a list of latent ids)."""
    if cfg is not None:
        f = next((f for f in dataclasses.fields(cfg) if f.name == name), None)
        if f is not None and "flag" in f.metadata:
            return f.metadata["flag"]
    return "--" + name.replace("_", "-")


_TYPE_WORDS = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}


def _scalar(name: str, t, v):
    """v as type t (an int-valued float is accepted as int, an int as float), else a UserError.
    `name`: a field name (shown as its option, --name) or a label with spaces, shown as is. A path object
    is accepted where a string is expected (library callers write `out=Path(...)`) and stored as a string."""
    if t is str and isinstance(v, os.PathLike):
        return os.fspath(v)
    ok = (
        t is bool
        and isinstance(v, bool)
        or t is int
        and isinstance(v, int)
        and not isinstance(v, bool)
        or t is float
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        or t is str
        and isinstance(v, str)
    )
    if t is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if not ok:
        raise UserError(f"{_label(name)} must be {_TYPE_WORDS[t]}, got {v!r} ({type(v).__name__})")
    if t is float:
        if not math.isfinite(v):
            raise UserError(f"{_label(name)} must be a finite number, got {v!r}")
        return float(v)
    return v


def _label(name: str) -> str:
    return name if " " in name else f"option {flag(name)}"


def check_types(cfg, where: str | None = None) -> None:
    """Check (and normalise in place) every field of a config dataclass against its annotation:
    booleans must be booleans (the string "false" is refused), numbers numbers, `X | None` may be
    None, and a list field takes a list of X or one X (a one-item list). Errors name the option
    (--name), or `where` + the field name (e.g. where="cfg.json saelab.config")."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        t, v = hints[f.name], getattr(cfg, f.name)
        name = f"{where} {f.name}" if where else f"option {flag(f.name, cfg)}"
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            if v is None:
                continue
            t = next(a for a in typing.get_args(t) if a is not type(None))
        if typing.get_origin(t) is list:
            (item,) = typing.get_args(t)
            items = list(v) if isinstance(v, (list, tuple)) else [v]
            setattr(cfg, f.name, [_scalar(name, item, x) for x in items])
        elif t in _TYPE_WORDS:
            setattr(cfg, f.name, _scalar(name, t, v))
            choices = f.metadata.get("choices")
            if choices and v not in choices:  # a config file's value, as argparse checks the flag's
                raise UserError(
                    f"unknown {flag(f.name, cfg) if not where else name} {v!r}; choose from {', '.join(choices)}"
                )


def _values(cfg, name: str) -> list:
    v = getattr(cfg, name)
    return [] if v is None else list(v) if isinstance(v, list) else [v]


def need_at_least(cfg, lo, *names: str) -> None:
    """Each named field (every item of a list field; None skipped) is >= lo."""
    for n in names:
        for v in _values(cfg, n):
            if v < lo:
                raise UserError(f"option {flag(n, cfg)} must be >= {lo}, got {v}")


def need_at_most(cfg, hi, *names: str) -> None:
    """Each named field (every item of a list field; None skipped) is <= hi: a bound on work that would
    otherwise run without end (steer --max-new-tokens 100000000)."""
    for n in names:
        for v in _values(cfg, n):
            if v > hi:
                raise UserError(f"option {flag(n, cfg)} must be <= {hi}, got {v}")


def need_positive(cfg, *names: str) -> None:
    for n in names:
        for v in _values(cfg, n):
            if not v > 0:
                raise UserError(f"option {flag(n, cfg)} must be > 0, got {v}")


def need_fraction(cfg, *names: str) -> None:
    for n in names:
        for v in _values(cfg, n):
            if not 0 <= v <= 1:
                raise UserError(f"option {flag(n, cfg)} must be between 0 and 1, got {v}")


def need_choice(cfg, name: str, choices) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise UserError(f"unknown {flag(name, cfg)} {v!r}; choose from {', '.join(choices)}")


_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def check_device(device: str) -> None:
    """--device must be cpu, cuda, cuda:N or mps, and that device must exist here."""
    if not _DEVICE.fullmatch(device):
        raise UserError(f"option --device {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    import torch

    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            raise UserError(f"option --device {device}: this machine has {n} CUDA device(s)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise UserError("option --device mps: MPS is not available on this machine")


DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: str, device: str = "cpu"):
    """--dtype must name a model precision that this device can run -> the torch dtype.
    Checked with a small matmul + softmax on the device (what every LM forward needs)."""
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    import torch

    t = getattr(torch, dtype)
    check_device(device)  # every model load passes here: --device banana is a clear error in every command
    if dtype == "float32":
        return t
    if (
        device.startswith("cuda")
        and dtype == "bfloat16"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise UserError(
            f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
            f"use --dtype float16 or float32"
        )
    try:
        x = torch.ones(4, 4, dtype=t, device=device)
        (x @ x).softmax(-1).sum().item()
    except (RuntimeError, TypeError) as e:
        raise UserError(f"--dtype {dtype} does not run on {device}: {e}") from e
    return t


def memory_bytes(device: str) -> int | None:
    """Physical memory of the device that will hold the tensors (None: unknown)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(int(device.split(":")[1]) if ":" in device else 0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
