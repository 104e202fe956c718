"""The training configuration: one dataclass that is also the command line (see options.py).

A dictionary type's own options (`--groups`, `--jumprelu-init-fire`, `--gated-init-fire`,
`--jumprelu-threshold-lr` ...) are declared on the type (its `Options` dataclass, sae/kind.py) and
composed in here by `with_type_options`: each becomes a flat TrainConfig field, so the flags, the
`--config` keys, manifest.json and the resume identity are what they were when they were written out
here. The type checks its own values (`Options.check`); a value set for another --arch is refused
here, generically. Adding a type adds its flags without editing this file.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass

from ..errors import UserError
from ..options import (
    check_device,
    check_dtype,
    check_types,
    corpus_option,
    device_option,
    dtype_option,
    flag,
    memory_bytes,
    model_option,
    need_at_least,
    need_choice,
    need_fraction,
    need_positive,
    opt,
    out_option,
    overwrite_option,
    threads_option,
)
from ..sae import ARCHITECTURES, uses_k
from ..sae.kind import LOSSES, TypeOptions
from .compile_check import check_compile

FINETUNE_LR_SHARE = 0.1  # a KL+MSE fine-tune's learning rate, as a share of the scratch rate (learning_rates)
__all__ = ["FINETUNE_LR_SHARE", "LOSSES", "TrainConfig", "type_option_owners"]


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


@dataclass
@with_type_options(after="sparsity_coeff")
class TrainConfig:
    out: str = out_option("run folder: one SAE folder per trained SAE")
    hookpoints: list[str] = opt(
        default_factory=lambda: ["model.layers.6"],
        help="module names or globs ('A->B': a transcoder from site A to site B)",
    )
    model: str = model_option()
    model_b: str | None = opt(
        None,
        "model diffing (--arch crosscoder): a second model of the same tokenizer and "
        "widths; the crosscoder reads --hookpoints in both, on the same tokens",
    )
    corpus: str = corpus_option()
    from_activations: str | None = opt(
        None, "activation cache folder (`saelab cache-activations`): train without the LM"
    )
    text_field: str = opt("text", "field holding the text in JSON lines / parquet / hf corpora")
    arch: str = opt("topk", " | ".join(ARCHITECTURES) + " (docs/DICTIONARIES.md)")
    latents: int = opt(4608, "dictionary size")
    k: list[int] = opt(
        default_factory=lambda: [32],
        help="active latents; one SAE per k ("
        + " / ".join(a for a, kind in ARCHITECTURES.items() if kind.capabilities.uses_k)
        + ")",
    )
    sparsity_coeff: list[float] = opt(
        default_factory=lambda: [0.0],
        help="sparsity penalty; one SAE per coeff ("
        + " / ".join(a for a, kind in ARCHITECTURES.items() if not kind.capabilities.uses_k)
        + ")",
    )
    # (here: every type's own options, `with_type_options`)
    skip: bool = opt(
        False,
        "transcoders ('A->B'): add a linear skip x @ W_skip.T, initialised to the "
        "least-squares fit of B from A (Paulo et al. 2025)",
    )
    tokens: int = opt(1_000_000, "training tokens (LM positions, before sink masking)")
    batch_tokens: int = opt(4096, "tokens per optimiser step")
    context: int = opt(256, "tokens per row fed to the LM")
    buffer_batches: int = opt(8, "LM batches mixed in the shuffling buffer")
    lm_batch_tokens: int | None = opt(
        None,
        "tokens per LM forward (none: --batch-tokens); on a GPU a larger LM batch "
        "keeps it busy while the SAE steps stay --batch-tokens. The data is the same",
    )
    lr: list[float] | None = opt(
        None, "learning rates, one SAE per value (none: 2e-3 / sqrt(latents / 2^14); a tenth of that for --loss kl+mse)"
    )
    warmup_fraction: float = opt(0.05, "fraction of steps with linear learning-rate warmup")
    decay_fraction: float = opt(0.2, "linear decay to 0 over the last fraction of steps")
    aux_coeff: float = opt(1 / 32, "weight of the auxiliary loss that revives dead latents")
    dead_tokens: int | None = opt(
        None, "a latent is dead after this many tokens unfired (none: tokens / 10, at least one batch, at most 10M)"
    )
    bias_init: str = opt("median", "decoder bias init from the first batch: median | mean")
    sink_first_positions: int = opt(1, "positions at the start of each row left out of training")
    sink_norm_factor: float = opt(5.0, "leave out positions with norm > factor x median norm (0: off)")
    mask_special: bool = opt(True, "leave out BOS/EOS/pad positions")
    heldout_fraction: float = opt(0.05, "fraction of corpus rows held out for evaluation")
    checkpoint_every: int = opt(250_000, "tokens between checkpoints")
    seed: int = opt(0, "random seed (data order, initialisation)")
    threads: int | None = threads_option()
    device: str = device_option()
    dtype: str = dtype_option()
    distributed: str = opt(
        "data",
        "torchrun jobs: data (rows split, gradients all-reduced) | modules (SAEs split) | "
        "latents (each SAE's latents split; topk, batchtopk, matryoshka; --latents "
        "divisible by the processes)",
    )
    dist_timeout: float = opt(300.0, "torchrun jobs: seconds to wait for a stalled or dead rank before failing")
    compile: bool = opt(
        False,
        "torch.compile the dictionary's training forward and loss (not the LM); --loss local "
        "only; needs a C++ compiler on CPU, triton on CUDA (docs/SCALE.md)",
    )
    wandb: str | None = opt(None, "wandb project name (needs wandb installed)")
    resume: bool = opt(False, "continue an interrupted run in --out from its last checkpoint")
    overwrite: bool = overwrite_option("an existing run folder (only what a training run writes)")
    loss: str = opt("local", "local | e2e | e2e+ds | kl+mse (end-to-end losses and the KL+MSE fine-tune: docs/E2E.md)")
    kl_coeff: float | None = opt(
        None,
        "weight of KL(p_clean || p_spliced), nats/token. e2e, e2e+ds: default 0.5 "
        "(the paper's); kl+mse and --finetune-fraction: default 1, relative to the "
        "automatically balanced MSE term (2 = the KL counts twice as much)",
    )
    downstream_coeff: float = opt(2.5, "e2e+ds: total weight of the later-layer MSE, split equally over the layers")
    downstream_layers: list[int] | None = opt(None, "e2e+ds: blocks whose output is matched (none: every later block)")
    e2e_micro_rows: int | None = opt(
        None, "e2e: rows per forward/backward, gradients accumulated (none: min(rows per batch, 8))"
    )
    e2e_recompute: bool = opt(
        False,
        "e2e: activation checkpointing of later blocks (less memory, more "
        "compute; logits are never kept, whatever this says)",
    )
    init_from: str | None = opt(
        None,
        "start from this SAE folder (saelab, SAELens or sparsify): its weights, arch, "
        "latents, k / sparsity coeff, hookpoint and skip; no data-dependent init",
    )
    finetune_fraction: float | None = opt(
        None, "--loss local: train the last fraction of --tokens with the kl+mse objective (e.g. 0.05; docs/E2E.md)"
    )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def learning_rates(self) -> list[float]:
        if isinstance(self.lr, (int, float)):
            return [float(self.lr)]
        # 1/sqrt(latents / 2^14) scaling (Gao et al. 2024) with base 2e-3, ten times their 2e-4: our
        # runs are short (~1M tokens) and a sweep from one forward (docs/BENCHMARKS.md) measured FVU
        # 0.16 at 2e-3 vs 0.36 at 2e-4 (base) after 295k tokens on SmolLM2 layer 6.
        if self.lr:
            return list(self.lr)
        scratch = 2e-3 / math.sqrt(self.latents / 2**14)
        # A kl+mse run fine-tunes a trained dictionary: a tenth of the scratch rate. Measured on the
        # 1M-token layer-6 TopK k = 32 SAE, 49k fine-tune tokens (docs/research/e2e.md): lr 3e-4 cut the CE
        # increase by 28% (FVU +3.7%), 1e-4 by 18%, while 1e-3 made KL and FVU worse within 16k tokens.
        return [scratch * FINETUNE_LR_SHARE if self.loss == "kl+mse" else scratch]

    @property
    def kl_weight(self) -> float:
        """--kl-coeff, or its default: 0.5 for e2e (Braun et al.), 1 for kl+mse (KL and MSE terms equal)."""
        if self.kl_coeff is not None:
            return self.kl_coeff
        return 1.0 if self.loss == "kl+mse" or self.finetune_fraction else 0.5

    def sweep_values(self) -> list[tuple[int | None, float, float]]:
        """(k, sparsity_coeff, lr) per SAE trained at each hookpoint."""
        firsts = [(k, 0.0) for k in self.k] if uses_k(self.arch) else [(None, c) for c in self.sparsity_coeff]
        return [(k, c, lr) for k, c in firsts for lr in self.learning_rates]

    @property
    def kind(self):
        """The dictionary type's class (sae/registry.py): its options, capabilities and foreign names."""
        return ARCHITECTURES[self.arch]

    def type_options(self, arch: str | None = None) -> TypeOptions:
        """The options of `arch` (default: --arch) as its own dataclass, read from this config's fields."""
        options = ARCHITECTURES[arch or self.arch].Options
        return options(**{f.name: getattr(self, f.name) for f in dataclasses.fields(options)})

    def validate(self) -> None:
        """Everything that can be checked before the model loads: the run's own options, then the
        dictionary's. (train/plan.py checks the two halves around --init-from's adoption, each once.)"""
        self.check_run()
        self.check_dictionary()

    def check_run(self) -> None:
        """Types, then the ranges of every option that a dictionary (--init-from) does not fix."""
        check_types(self)
        need_at_least(
            self, 1, "latents", "tokens", "batch_tokens", "buffer_batches", "checkpoint_every", "threads", "dead_tokens"
        )
        need_at_least(self, 0, "sink_first_positions", "seed", "downstream_layers")
        need_at_least(self, 0.0, "sink_norm_factor", "aux_coeff")
        need_positive(self, "dist_timeout")
        need_fraction(self, "warmup_fraction", "decay_fraction")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise UserError("--warmup-fraction + --decay-fraction must be <= 1")
        if self.sink_first_positions >= self.context:
            raise UserError(
                f"--sink-first-positions ({self.sink_first_positions}) leaves nothing of a --context {self.context} row"
            )
        need_choice(self, "distributed", ("data", "modules", "latents"))
        check_device(self.device)
        check_dtype(self.dtype, self.device)
        if self.context < 2:
            raise UserError("--context must be at least 2")
        if self.lm_batch_tokens is not None and self.lm_batch_tokens < self.batch_tokens:
            raise UserError(
                f"--lm-batch-tokens ({self.lm_batch_tokens}) must be at least --batch-tokens "
                f"({self.batch_tokens}): the LM batch holds whole SAE batches"
            )
        if self.batch_tokens < self.context:
            raise UserError(
                f"--batch-tokens ({self.batch_tokens}) must hold at least one row of --context ({self.context})"
            )
        if self.tokens < self.batch_tokens:
            raise UserError(f"--tokens ({self.tokens}) is smaller than one batch (--batch-tokens {self.batch_tokens})")
        if self.bias_init not in ("median", "mean"):
            raise UserError("--bias-init must be median or mean")
        if not 0 < self.heldout_fraction < 1:
            raise UserError("--heldout-fraction must be between 0 and 1")
        if any(lr <= 0 for lr in self.learning_rates):
            raise UserError("--lr must be positive")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other")
        self._validate_objective()
        if self.compile:
            check_compile(self.device, self.loss, self.finetune_fraction)
        if self.init_from:  # a type option that sets how a new dictionary starts (kind.start_option)
            for name in type_option_owners():
                f = self.__dataclass_fields__[name]
                if f.metadata.get("start") and getattr(self, name) != _default(f):
                    raise UserError(
                        f"{flag(name)} sets how a new dictionary starts; --init-from copies "
                        f"{self.init_from} as it is: drop {flag(name)}"
                    )

    def check_dictionary(self) -> None:
        """What the dictionary is (arch, latents, k or coefficients, sites, the type's options) and what
        its type can do; after --init-from's adoption (train/plan.py) these are the dictionary's values."""
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown --arch {self.arch!r}; choose from {', '.join(ARCHITECTURES)}")
        if uses_k(self.arch):
            if not self.k or any(k < 1 for k in self.k):
                raise UserError("--k needs positive values")
            bad = [k for k in self.k if k > self.latents]
            if bad:
                raise UserError(f"k={bad[0]} is larger than the dictionary (--latents {self.latents})")
        elif any(c < 0 for c in self.sparsity_coeff):
            raise UserError("--sparsity-coeff must be >= 0")
        if not self.hookpoints:
            raise UserError("give at least one --hookpoints entry")
        self._check_type_options()
        self._check_capabilities()
        self._validate_model_b()
        self._check_memory()

    def _check_memory(self) -> None:
        """Up front, before any weights load: one batch's encoder activations ([batch_tokens, latents]
        float32 per SAE per hookpoint pattern, a lower bound of what training holds) must fit the device."""
        need = 4 * self.batch_tokens * self.latents * len(self.sweep_values()) * len(self.hookpoints)
        have = memory_bytes(self.device)
        if have and need > have:
            raise UserError(
                f"--batch-tokens {self.batch_tokens} needs at least {need / 2**30:.1f} GiB for one batch of "
                f"encoder activations ({len(self.sweep_values()) * len(self.hookpoints)} SAE(s) x "
                f"{self.latents} latents x 4 bytes per token); {self.device} has {have / 2**30:.1f} GiB. "
                f"Lower --batch-tokens (or --latents)"
            )

    def _check_type_options(self) -> None:
        """Every type's options at their defaults except --arch's own, which that type checks."""
        for name, arch in type_option_owners().items():
            f = self.__dataclass_fields__[name]
            if getattr(self, name) == _default(f):
                continue
            if arch != self.arch:
                raise UserError(f"{flag(name)} applies to --arch {arch} only, not {self.arch}")
        self.type_options().check(self)

    def _check_capabilities(self) -> None:
        """What --arch's type declares it can do (sae/kind.py Capabilities)."""
        caps = self.kind.capabilities
        transcoders = ["->" in h for h in self.hookpoints]
        if self.skip and not all(transcoders):
            raise UserError("--skip applies to transcoders only: give every --hookpoints entry as 'A->B'")
        if not caps.transcoder and any(transcoders):
            raise UserError(
                f"--arch {self.arch} reconstructs the site(s) it reads (give them as --hookpoints module "
                f"names, e.g. 'model.layers.{{4,6,8}}'), not transcoder sites 'A->B'"
            )
        if self.loss not in caps.losses or (self.finetune_fraction and "kl+mse" not in caps.losses):
            what = f"--loss {self.loss}" if self.loss != "local" else "--finetune-fraction (kl+mse)"
            only = "--loss local only" if caps.losses == ("local",) else f"--loss {' | '.join(caps.losses)}"
            raise UserError(
                f"--arch {self.arch} trains with {only} (its own loss terms reconstruct the "
                f"target: docs/DICTIONARIES.md); {what} is not supported"
            )

    def _validate_model_b(self) -> None:
        """Model diffing: one crosscoder over the same sites of two models, both run on every batch."""
        if self.model_b is None:
            return
        if not self.kind.capabilities.multi_site:
            multi = " or ".join(f"--arch {a}" for a, c in ARCHITECTURES.items() if c.capabilities.multi_site)
            raise UserError(
                f"--model-b trains a crosscoder over --hookpoints in both models; add {multi} (not {self.arch})"
            )
        for bad, what in (
            (self.from_activations, "--from-activations (an activation cache holds one model)"),
            (self.init_from, "--init-from"),
        ):
            if bad:
                raise UserError(f"--model-b runs both models' forwards on every batch; it does not combine with {what}")

    def _validate_objective(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"unknown --loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.kl_coeff is not None and self.kl_coeff <= 0:
            raise UserError("--kl-coeff must be positive")
        if self.kl_coeff is not None and self.loss == "local" and not self.finetune_fraction:
            raise UserError(
                "--kl-coeff weighs the KL term of --loss e2e, e2e+ds, kl+mse or --finetune-fraction; "
                "a --loss local run has none"
            )
        if self.downstream_coeff < 0:
            raise UserError("--downstream-coeff must be >= 0")
        if self.downstream_layers is not None and self.loss != "e2e+ds":
            raise UserError("--downstream-layers only applies to --loss e2e+ds")
        if self.e2e_micro_rows is not None and self.e2e_micro_rows < 1:
            raise UserError("--e2e-micro-rows must be positive")
        if self.finetune_fraction is not None:
            if not 0 < self.finetune_fraction < 1:
                raise UserError(
                    f"--finetune-fraction must be between 0 and 1 (exclusive), got {self.finetune_fraction}"
                )
            if self.loss != "local":
                raise UserError(
                    f"--finetune-fraction switches a --loss local run to kl+mse; it does not combine "
                    f"with --loss {self.loss} (use --loss kl+mse alone to fine-tune the whole run)"
                )
            if self.from_activations:
                raise UserError(
                    "--finetune-fraction needs the model's forward pass (the KL term); it cannot train "
                    "from an activation cache (--from-activations)"
                )
        if self.loss != "local" and self.from_activations:
            raise UserError(
                f"--loss {self.loss} needs the model's forward pass; it cannot train from an activation "
                f"cache (--from-activations)"
            )


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
