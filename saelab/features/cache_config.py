"""What `saelab cache` (and `write_latent_cache` in the Python API) takes: one dataclass, whose fields
are the command's options (`opt(default, help)`; the shared ones declared once in options.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..option_checks import check_dtype, check_types, need_at_least
from ..options import corpus_option, dtype_option, model_option, opt, out_option, overwrite_option, threads_option
from ..sinks import SinkConfig

SPLITS = ("heldout-first", "heldout", "train")


@dataclass(kw_only=True)
class LatentCacheConfig:
    """`saelab cache` / `saelab.cache_features`: the active latents of SAE folders (and/or MLP neurons) over
    `tokens` tokens of their corpus, written as a latent cache (what explain, score and the views read)."""

    sae_dirs: list[str] = opt(
        default_factory=list,
        help="SAE folders (saelab format); they must share model, corpus, context",
        positional=True,
    )
    tokens: int = opt(1_000_000, "tokens to cache")
    out: str = out_option("cache folder")
    neurons: str | None = opt(
        None,
        "also cache the units at this hookpoint as a baseline dictionary (e.g. model.layers.6.mlp.down_proj:input)",
    )
    neuron_k: int = opt(32, "keep the top-k neurons per token (0: every positive value)")
    model: str | None = model_option(None, shown="the one recorded in the SAE folders, else embedded")
    corpus: str | None = corpus_option(None, shown="the one recorded in the SAE folders, else builtin")
    context: int | None = opt(None, "tokens per row (none: the SAEs' context, else 256)")
    split: str = opt("heldout-first", "rows to use: heldout-first | heldout | train")
    batch_rows: int = opt(16, "rows per forward pass")
    chunk_rows: int = opt(256, "rows per resumable chunk")
    shard_size: int = opt(1024, "latents per shard file")
    sink_first_positions: int | None = opt(None, "leading positions never recorded (none: the SAE's)")
    sink_norm_factor: float | None = opt(None, "skip positions with norm > factor x median (0 = off; none: the SAE's)")
    sinks: bool = opt(True, "leave out sink positions; --no-sinks records every position, sinks included")
    threads: int | None = threads_option()
    dtype: str = dtype_option()
    overwrite: bool = overwrite_option("a cache made with other arguments")

    def validate(self) -> None:
        """Every check that needs no model, so a bad value fails before anything loads."""
        check_types(self)
        if not self.sae_dirs and not self.neurons:
            raise UserError("give at least one SAE folder or --neurons HOOKPOINT")
        if self.tokens < 1 or self.batch_rows < 1 or self.chunk_rows < 1 or self.shard_size < 1:
            raise UserError("--tokens, --batch-rows, --chunk-rows and --shard-size must be positive")
        if self.split not in SPLITS:
            raise UserError(f"--split must be heldout-first, heldout or train, not {self.split!r}")
        need_at_least(self, 1, "threads")
        need_at_least(self, 0, "neuron_k", "sink_first_positions", "sink_norm_factor")
        need_at_least(self, 2, "context")
        if not self.sinks and (self.sink_first_positions is not None or self.sink_norm_factor is not None):
            raise UserError("--no-sinks cannot be combined with --sink-first-positions / --sink-norm-factor")
        check_dtype(self.dtype)

    def sink(self, recorded: SinkConfig) -> SinkConfig:
        """The sink rules to record with: `recorded` (the first SAE folder's) unless the options say otherwise;
        one of the two sink options alone takes the other from SinkConfig's defaults."""
        if not self.sinks:
            return SinkConfig.off()
        if self.sink_first_positions is None and self.sink_norm_factor is None:
            return recorded
        d = SinkConfig()
        return SinkConfig(
            d.first_positions if self.sink_first_positions is None else self.sink_first_positions,
            d.mask_special,
            d.norm_factor if self.sink_norm_factor is None else self.sink_norm_factor,
        )
