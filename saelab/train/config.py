"""The training configuration: one dataclass that is also the command line (see options.py).

A dictionary type's own options (`--groups`, `--jumprelu-init-fire`, `--gated-init-fire`,
`--jumprelu-threshold-lr` ...) are declared on the type (its `Options` dataclass, sae/kind.py) and
composed in here by `with_type_options` (type_options.py): each becomes a flat TrainConfig field, so the
flags, the `--config` keys, manifest.json and the resume identity are what they were when they were
written out here. The type checks its own values (`Options.check`); a value set for another --arch is
refused by the config checks (config_checks.py), generically. Adding a type adds its flags without
editing this file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from ..options import (
    corpus_option,
    device_option,
    dtype_option,
    model_option,
    opt,
    out_option,
    overwrite_option,
    threads_option,
)
from ..sae import ARCHITECTURES, uses_k
from ..sae.kind import LOSSES, TypeOptions
from . import config_checks
from .finetune_budget import default_batch_tokens
from .type_options import with_type_options

FINETUNE_LR_SHARE = 0.1  # a KL+MSE fine-tune's learning rate, as a share of the scratch rate (learning_rates)
__all__ = ["FINETUNE_LR_SHARE", "LOSSES", "TrainConfig"]


@dataclass
@with_type_options(after="sparsity_coeff")
class TrainConfig:
    """`saelab train` / `saelab.train`: which dictionaries (hookpoints, type, `latents` = --dict-size, k or
    sparsity), trained on what (model, corpus or an activation cache, `tokens`) and how (batch, learning rate,
    schedule, device). One field per command-line option; one dictionary per (hookpoint, k or sparsity, lr)."""

    out: str = out_option("run folder: one SAE folder per trained SAE")
    hookpoints: list[str] = opt(
        default_factory=lambda: ["model.layers.6"],
        help="module names or globs ('A->B': a transcoder from site A to site B)",
    )
    layers: str | None = opt(
        None,
        "all | 0-29 | 0,4,8: a transcoder from each layer's MLP input to its MLP output (the family's "
        "sites; one per layer, or one --arch clt over them) and replacement.json; not with --hookpoints",
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
    latents: int = opt(
        4608, "dictionary size: the number of latents", flag="--dict-size", old_spellings=("--latents",)
    )  # --dict-size: `--latents` is a list of latent ids in explain / score / dashboard
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
    batch_tokens: int | None = opt(
        None,
        "tokens per optimiser step (none: 4096; a --loss kl+mse fine-tune takes about 48 steps: --tokens / 48 "
        "in whole --context rows, at most 4096; docs/E2E.md)",
    )
    context: int = opt(256, "tokens per row fed to the LM")
    buffer_batches: int = opt(8, "LM batches mixed in the shuffling buffer")
    lm_batch_tokens: int | None = opt(
        None,
        "tokens per LM forward (none: --batch-tokens); on a GPU a larger LM batch "
        "keeps it busy while the SAE steps stay --batch-tokens. The data is the same",
    )
    lr: list[float] | None = opt(
        None,
        "learning rates, one SAE per value (none: 2e-3 / sqrt(dict size / 2^14); a tenth of that for --loss kl+mse)",
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
    seeds: int | None = opt(
        None,
        "train N runs that differ only in --seed (seed, seed+1, ...), one after another, into OUT/seed-<S>/ "
        "(each a normal run folder: --resume continues each; `saelab bench` groups them)",
    )
    threads: int | None = threads_option()
    device: str = device_option()
    dtype: str = dtype_option()
    distributed: str = opt(
        "data",
        "torchrun jobs: data (rows split, gradients all-reduced) | modules (SAEs split) | "
        "latents (each SAE's latents split; topk, batchtopk, matryoshka; --dict-size "
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
        """Every option as plain JSON values (what the run manifest records)."""
        return asdict(self)

    @property
    def learning_rates(self) -> list[float]:
        """The learning rates trained (one dictionary per value): `lr` as given, else 2e-3 / sqrt(latents / 2^14)
        (a tenth of it for a kl+mse fine-tune)."""
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
    def step_tokens(self) -> int:
        """--batch-tokens, or its default for this loss and budget (finetune_budget.py). A resolved run's
        config (train/plan.py) holds the value itself."""
        if self.batch_tokens is not None:
            return self.batch_tokens
        return default_batch_tokens(self.loss, self.tokens, self.context)

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
        dictionary's. (train/plan.py checks the two halves around --init-from's adoption, each once,
        and the dictionary of a --layers run on the sites it derives from the model's config.)"""
        self.check_run()
        if self.layers is None:  # --layers: the sites come from the model's config; train/plan.py checks them
            self.check_dictionary()

    def check_run(self) -> None:
        """Types, then the ranges of every option that a dictionary (--init-from) does not fix (config_checks.py)."""
        config_checks.check_run(self)

    def check_dictionary(self) -> None:
        """What the dictionary is (arch, latents, k or coefficients, sites, the type's options) and what
        its type can do; after --init-from's adoption (train/plan.py) these are the dictionary's values
        (config_checks.py)."""
        config_checks.check_dictionary(self)
