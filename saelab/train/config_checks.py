"""The checks of a TrainConfig (config.py), split as train/plan.py runs them: `check_run` (the run's own
options: types, ranges, device, dtype, objective, what --init-from may not set) and `check_dictionary`
(what the dictionary is and what its type can do, after --init-from's adoption). Each failure is a
one-line UserError before the model loads. `cfg` is a TrainConfig throughout (not imported: config.py
imports this module)."""

from __future__ import annotations

from ..budgets import need_memory, need_sane_tokens
from ..errors import UserError
from ..option_checks import (
    check_device,
    check_dtype,
    check_types,
    flag,
    memory_bytes,
    need_at_least,
    need_choice,
    need_fraction,
    need_positive,
)
from ..sae import ARCHITECTURES, uses_k
from ..sae.kind import LOSSES
from .compile_check import check_compile
from .finetune_budget import check_finetune_budget
from .layers import parse_layers
from .type_options import option_default, type_option_owners


def check_run(cfg) -> None:
    """A TrainConfig's types, then the ranges of every option that a dictionary (--init-from) does not fix."""
    check_types(cfg)
    need_at_least(
        cfg, 1, "latents", "tokens", "batch_tokens", "buffer_batches", "checkpoint_every", "threads", "dead_tokens"
    )
    need_at_least(cfg, 0, "sink_first_positions", "seed", "downstream_layers")
    need_at_least(cfg, 1, "seeds")
    need_sane_tokens(cfg.tokens)
    need_at_least(cfg, 0.0, "sink_norm_factor", "aux_coeff", "sparsity_coeff")
    need_positive(cfg, "dist_timeout")
    need_fraction(cfg, "warmup_fraction", "decay_fraction")
    if cfg.warmup_fraction + cfg.decay_fraction > 1:
        raise UserError("--warmup-fraction + --decay-fraction must be <= 1")
    if cfg.sink_first_positions >= cfg.context:
        raise UserError(
            f"--sink-first-positions ({cfg.sink_first_positions}) leaves nothing of a --context {cfg.context} row"
        )
    need_choice(cfg, "distributed", ("data", "modules", "latents"))
    check_device(cfg.device)
    check_dtype(cfg.dtype, cfg.device)
    if cfg.context < 2:
        raise UserError("--context must be at least 2")
    bt = cfg.step_tokens  # --batch-tokens or its default for this loss and budget
    if cfg.lm_batch_tokens is not None and cfg.lm_batch_tokens < bt:
        raise UserError(
            f"--lm-batch-tokens ({cfg.lm_batch_tokens}) must be at least --batch-tokens "
            f"({bt}): the LM batch holds whole SAE batches"
        )
    if bt < cfg.context:
        raise UserError(f"--batch-tokens ({bt}) must hold at least one row of --context ({cfg.context})")
    if cfg.tokens < bt:
        raise UserError(f"--tokens ({cfg.tokens}) is smaller than one batch (--batch-tokens {bt})")
    if cfg.loss == "kl+mse":
        check_finetune_budget(cfg.tokens, bt, cfg.context, given=cfg.batch_tokens is not None)
    if cfg.bias_init not in ("median", "mean"):
        raise UserError("--bias-init must be median or mean")
    if not 0 < cfg.heldout_fraction < 1:
        raise UserError("--heldout-fraction must be between 0 and 1")
    if any(lr <= 0 for lr in cfg.learning_rates):
        raise UserError("--lr must be positive")
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume and --overwrite contradict each other")
    _check_objective(cfg)
    _check_layers(cfg)
    if cfg.compile:
        check_compile(cfg.device, cfg.loss, cfg.finetune_fraction)
    if cfg.init_from:  # a type option that sets how a new dictionary starts (kind.start_option)
        for name in type_option_owners():
            f = cfg.__dataclass_fields__[name]
            if f.metadata.get("start") and getattr(cfg, name) != option_default(f):
                raise UserError(
                    f"{flag(name)} sets how a new dictionary starts; --init-from copies "
                    f"{cfg.init_from} as it is: drop {flag(name)}"
                )


def _check_layers(cfg) -> None:
    """--layers (train/layers.py): its spelling, and what it cannot combine with; the range needs the model's
    config and is checked where the sites are made (train/plan.py)."""
    if cfg.layers is None:
        return
    parse_layers(cfg.layers)
    if cfg.hookpoints != cfg.__dataclass_fields__["hookpoints"].default_factory():
        raise UserError("--layers chooses the sites (each layer's MLP input -> output); drop --hookpoints")
    for bad, what in ((cfg.init_from, "--init-from"), (cfg.model_b, "--model-b")):
        if bad:
            raise UserError(f"--layers trains a new replacement of one model; it does not combine with {what}")
    if cfg.arch in ARCHITECTURES and len(cfg.sweep_values()) > 1:  # (an unknown --arch: check_dictionary says so)
        raise UserError(
            "--layers trains one replacement (one dictionary per layer): give one --k / --sparsity-coeff and one --lr"
        )


def check_dictionary(cfg) -> None:
    """A TrainConfig's dictionary: what it is (arch, latents, k or coefficients, sites, the type's options) and what
    its type can do; after --init-from's adoption (train/plan.py) these are the dictionary's values."""
    if cfg.arch not in ARCHITECTURES:
        raise UserError(f"unknown --arch {cfg.arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if uses_k(cfg.arch):
        if not cfg.k or any(k < 1 for k in cfg.k):
            raise UserError("--k needs positive values")
        bad = [k for k in cfg.k if k > cfg.latents]
        if bad:
            raise UserError(f"k={bad[0]} is larger than the dictionary (--dict-size {cfg.latents})")
    elif any(c < 0 for c in cfg.sparsity_coeff):
        raise UserError("--sparsity-coeff must be >= 0")
    if not cfg.hookpoints:
        raise UserError("give at least one --hookpoints entry")
    _check_type_options(cfg)
    _check_capabilities(cfg)
    _check_model_b(cfg)
    _check_memory(cfg)


def _check_memory(cfg) -> None:
    """Up front, before any weights load: one batch's encoder activations ([batch_tokens, latents]
    float32 per SAE per hookpoint pattern, a lower bound of what training holds) must fit the device, and
    the rows' visiting order (one int64 per row of --tokens, built whole, twice while it is made:
    activations/stream.py row_order) must fit the host."""
    if not cfg.from_activations:
        need_memory(
            16 * (cfg.tokens // cfg.context),
            f"--tokens {cfg.tokens:,} (the order of its {cfg.tokens // cfg.context:,} rows of --context {cfg.context})",
            "Lower --tokens",
        )
    need = 4 * cfg.step_tokens * cfg.latents * len(cfg.sweep_values()) * len(cfg.hookpoints)
    have = memory_bytes(cfg.device)
    if have and need > have:
        raise UserError(
            f"--batch-tokens {cfg.step_tokens} needs at least {need / 2**30:.1f} GiB for one batch of "
            f"encoder activations ({len(cfg.sweep_values()) * len(cfg.hookpoints)} SAE(s) x "
            f"{cfg.latents} latents x 4 bytes per token); {cfg.device} has {have / 2**30:.1f} GiB. "
            f"Lower --batch-tokens (or --dict-size)"
        )


def _check_type_options(cfg) -> None:
    """Every type's options at their defaults except --arch's own, which that type checks."""
    for name, arch in type_option_owners().items():
        f = cfg.__dataclass_fields__[name]
        if getattr(cfg, name) == option_default(f):
            continue
        if arch != cfg.arch:
            raise UserError(f"{flag(name)} applies to --arch {arch} only, not {cfg.arch}")
    cfg.type_options().check(cfg)


def _check_capabilities(cfg) -> None:
    """What --arch's type declares it can do (sae/kind.py Capabilities)."""
    caps = cfg.kind.capabilities
    transcoders = ["->" in h for h in cfg.hookpoints]
    if cfg.skip and not all(transcoders):
        raise UserError("--skip applies to transcoders only: give every --hookpoints entry as 'A->B'")
    if not caps.transcoder and any(transcoders):
        raise UserError(
            f"--arch {cfg.arch} reconstructs the site(s) it reads (give them as --hookpoints module "
            f"names, e.g. 'model.layers.{{4,6,8}}'), not transcoder sites 'A->B'"
        )
    if cfg.loss not in caps.losses or (cfg.finetune_fraction and "kl+mse" not in caps.losses):
        what = f"--loss {cfg.loss}" if cfg.loss != "local" else "--finetune-fraction (kl+mse)"
        only = "--loss local only" if caps.losses == ("local",) else f"--loss {' | '.join(caps.losses)}"
        raise UserError(
            f"--arch {cfg.arch} trains with {only} (its own loss terms reconstruct the "
            f"target: docs/DICTIONARIES.md); {what} is not supported"
        )


def _check_model_b(cfg) -> None:
    """Model diffing: one crosscoder over the same sites of two models, both run on every batch."""
    if cfg.model_b is None:
        return
    if not cfg.kind.capabilities.multi_site:
        multi = " or ".join(f"--arch {a}" for a, c in ARCHITECTURES.items() if c.capabilities.multi_site)
        raise UserError(f"--model-b trains a crosscoder over --hookpoints in both models; add {multi} (not {cfg.arch})")
    for bad, what in (
        (cfg.from_activations, "--from-activations (an activation cache holds one model)"),
        (cfg.init_from, "--init-from"),
    ):
        if bad:
            raise UserError(f"--model-b runs both models' forwards on every batch; it does not combine with {what}")


def _check_objective(cfg) -> None:
    if cfg.loss not in LOSSES:
        raise UserError(f"unknown --loss {cfg.loss!r}; choose from {', '.join(LOSSES)}")
    if cfg.kl_coeff is not None and cfg.kl_coeff <= 0:
        raise UserError("--kl-coeff must be positive")
    if cfg.kl_coeff is not None and cfg.loss == "local" and not cfg.finetune_fraction:
        raise UserError(
            "--kl-coeff weighs the KL term of --loss e2e, e2e+ds, kl+mse or --finetune-fraction; "
            "a --loss local run has none"
        )
    if cfg.downstream_coeff < 0:
        raise UserError("--downstream-coeff must be >= 0")
    if cfg.downstream_layers is not None and cfg.loss != "e2e+ds":
        raise UserError("--downstream-layers only applies to --loss e2e+ds")
    if cfg.e2e_micro_rows is not None and cfg.e2e_micro_rows < 1:
        raise UserError("--e2e-micro-rows must be positive")
    if cfg.finetune_fraction is not None:
        if not 0 < cfg.finetune_fraction < 1:
            raise UserError(f"--finetune-fraction must be between 0 and 1 (exclusive), got {cfg.finetune_fraction}")
        if cfg.loss != "local":
            raise UserError(
                f"--finetune-fraction switches a --loss local run to kl+mse; it does not combine "
                f"with --loss {cfg.loss} (use --loss kl+mse alone to fine-tune the whole run)"
            )
        if cfg.from_activations:
            raise UserError(
                "--finetune-fraction needs the model's forward pass (the KL term); it cannot train "
                "from an activation cache (--from-activations)"
            )
    if cfg.loss != "local" and cfg.from_activations:
        raise UserError(
            f"--loss {cfg.loss} needs the model's forward pass; it cannot train from an activation "
            f"cache (--from-activations)"
        )
