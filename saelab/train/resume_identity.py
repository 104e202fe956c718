"""What a checkpoint must share with the run that resumes it, stored in full so --resume can say
which option differs, and so a checkpoint written before an option existed still resumes while
that option is at its default.

Checkpoint meta holds both `identity` (one hash, all that saelab wrote before this module) and
`resume_identity` (the dict below, every option with its value). The hash covers only the options
that differ from their default, so an option added later, left at its default, leaves the hash as it
was: a checkpoint that holds only a hash resumes across the upgrade too. A hash-only checkpoint from a
saelab that hashed every option (before this rule) still resumes when nothing was added since.
"""

from __future__ import annotations

import dataclasses
import json

from ..errors import UserError
from ..option_checks import flag
from ..storage import fingerprint
from .finetune_budget import default_batch_tokens

# Options that may change between a run and its resume: where and how fast it runs, or how often it
# checkpoints, never what it computes.
FREE_OPTIONS = ("resume", "overwrite", "threads", "checkpoint_every", "wandb", "device", "dist_timeout", "compile")
# The parts besides the options, with how the error names them.
PARTS = {
    "members": "the SAEs",
    "data": "the data (fingerprint of corpus, tokenizer, context and held-out split)",
    "parallel": "the process layout",
}


def _json(v):
    """v as it reads back from the checkpoint's JSON: tuples become lists, paths strings."""
    return json.loads(json.dumps(v, default=str))


def resume_options(cfg) -> dict:
    c = cfg.to_dict()
    for k in FREE_OPTIONS:
        c.pop(k)
    return defaults_as_none(c)


def defaults_as_none(options: dict) -> dict:
    """--batch-tokens at the default its loss and budget give is stored as not given (None), as it was
    when the default was a constant: a checkpoint from before, or from a run that spelled the default
    out, resumes alike (finetune_budget.default_batch_tokens)."""
    keys = ("batch_tokens", "loss", "tokens", "context")
    if all(k in options for k in keys) and options["batch_tokens"] is not None:
        try:
            auto = default_batch_tokens(options["loss"], int(options["tokens"]), int(options["context"]))
        except (TypeError, ValueError, ZeroDivisionError):
            return options
        if options["batch_tokens"] == auto:
            return options | {"batch_tokens": None}
    return options


def resume_identity(cfg, names: list[str], data_fingerprint: str, parallel: dict) -> tuple[str, dict]:
    """(the hash, the dict): what a checkpoint stores as `identity` and `resume_identity`."""
    stored = _json({"config": resume_options(cfg), "members": names, "data": data_fingerprint, "parallel": parallel})
    return identity_hash(stored, type(cfg)), stored


def identity_hash(stored: dict, cls) -> str:
    """The hash of a `resume_identity` dict over the options that differ from their default in `cls`
    (an option added later, at its default, does not change it)."""
    defaults = _defaults(cls)
    options = {k: v for k, v in stored["config"].items() if k not in defaults or v != defaults[k]}
    return fingerprint(options, stored["members"], stored["data"], stored["parallel"])


def every_option_hash(stored: dict, batch_tokens: int | None = None) -> str:
    """The hash saelab wrote before it left default options out: over every option (--batch-tokens
    as the number it was then, never None)."""
    config = stored["config"]
    if config.get("batch_tokens") is None and batch_tokens is not None:
        config = config | {"batch_tokens": batch_tokens}
    return fingerprint(config, stored["members"], stored["data"], stored["parallel"])


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _json(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _json(f.default_factory())
    return out


def _show(v) -> str:
    return "none" if v is None else json.dumps(v)


def option_differences(stored: dict, cfg) -> list[str]:
    """Each resume-relevant option of `cfg` that differs from the checkpoint's `stored` options. An
    option the checkpoint does not record (written by a saelab that lacked it) matches only at its
    default; an option this saelab no longer has cannot be honoured, so it differs."""
    now, defaults = _json(resume_options(cfg)), _defaults(type(cfg))
    stored = defaults_as_none(stored)
    diffs = []
    for name, value in now.items():
        if name not in stored:
            if name not in defaults or value != defaults[name]:
                ok = f"resumes only at its default {_show(defaults[name])}" if name in defaults else "no default"
                diffs.append(f"{flag(name, cfg)} not recorded (an older saelab: {ok}; now {_show(value)})")
        elif stored[name] != value:
            diffs.append(f"{flag(name, cfg)} {_show(stored[name])} (now {_show(value)})")
    diffs += [
        f"{flag(name, cfg)} {_show(v)} (an option this saelab no longer has)"
        for name, v in stored.items()
        if name not in now
    ]
    return diffs


def check_options(meta: dict, cfg, out) -> None:
    """Before any weights load: refuse a checkpoint whose options differ, naming each one. A checkpoint
    with only the old hash is checked whole later (check_resume_identity)."""
    stored = meta.get("resume_identity")
    if stored is None:
        return
    diffs = option_differences(stored.get("config", {}), cfg)
    if diffs:
        raise UserError(
            f"--resume: the checkpoint in {out} was written with {', '.join(diffs)}; "
            f"start a new --out or restore those options"
        )


def check_resume_identity(meta: dict, cfg, identity: tuple[str, dict], out) -> None:
    """Once the SAEs and the data are known: everything that must match, options first."""
    old_message = (
        f"--resume: the checkpoint in {out} was written by a different configuration "
        f"(model, data, SAEs, loss or hyperparameters changed); start a new --out instead"
    )
    if "position" not in meta:
        raise UserError(old_message)
    stored = meta.get("resume_identity")
    if stored is None:  # written before the options were stored: only the hash can say
        if meta.get("identity") not in (identity[0], every_option_hash(identity[1], cfg.step_tokens)):
            raise UserError(old_message)
        return
    check_options(meta, cfg, out)
    now = identity[1]
    diffs = [
        f"{what} {_show(stored.get(part))} (now {_show(now[part])})"
        for part, what in PARTS.items()
        if stored.get(part) != now[part]
    ]
    if diffs:
        raise UserError(
            f"--resume: the checkpoint in {out} was written with {', '.join(diffs)}; start a new --out or restore them"
        )
