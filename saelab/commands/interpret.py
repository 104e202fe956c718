"""Automated interpretability commands: cache, explain, score, report, serve-llm."""

from __future__ import annotations


def cmd_cache(a) -> None:
    from ..cache import build_latent_cache
    from ..errors import UserError
    from ..sinks import SinkConfig

    if a.no_sinks and (a.sink_first_positions is not None or a.sink_norm_factor is not None):
        raise UserError("--no-sinks cannot be combined with --sink-first-positions / --sink-norm-factor")
    sink = None
    if a.no_sinks:
        sink = SinkConfig.off()
    elif a.sink_first_positions is not None or a.sink_norm_factor is not None:
        d = SinkConfig()
        sink = SinkConfig(a.sink_first_positions if a.sink_first_positions is not None else d.first_positions,
                          d.mask_special, a.sink_norm_factor if a.sink_norm_factor is not None else d.norm_factor)
    build_latent_cache(a.sae_dirs, a.tokens, a.out, neurons=a.neurons, neuron_k=a.neuron_k, model=a.model,
                       corpus=a.corpus, context=a.context, batch_rows=a.batch_rows, chunk_rows=a.chunk_rows,
                       shard_size=a.shard_size, sink=sink, split=a.split, threads=a.threads, overwrite=a.overwrite)


def register(sub) -> None:
    c = sub.add_parser("cache", help="cache the active latents of SAEs (and/or MLP neurons) over N tokens",
                       description="Run the model once over --tokens tokens and store every active latent sparsely "
                                   "(row, position, latent, value), sharded by latent range, tokens stored once. "
                                   "Rerun the same command to resume an interrupted run. Format: docs/INTERPRET.md.")
    c.add_argument("sae_dirs", nargs="*", help="SAE folders (saelab format); they must share model, corpus, context")
    c.add_argument("--tokens", type=int, default=1_000_000, help="tokens to cache (default: 1,000,000)")
    c.add_argument("--out", required=True, help="cache folder")
    c.add_argument("--neurons", help="also cache the units at this hookpoint as a baseline dictionary "
                                     "(e.g. model.layers.6.mlp.down_proj:input)")
    c.add_argument("--neuron-k", type=int, default=32, help="keep the top-k neurons per token (0: every positive value; "
                                                            "default 32)")
    c.add_argument("--model", help="model (default: the one recorded in the SAE folders, else embedded)")
    c.add_argument("--corpus", help="corpus (default: the one recorded in the SAE folders, else builtin)")
    c.add_argument("--context", type=int, help="tokens per row (default: the SAEs' context, else 256)")
    c.add_argument("--split", default="heldout-first", help="rows to use: heldout-first | heldout | train")
    c.add_argument("--batch-rows", type=int, default=16, help="rows per forward pass (default 16)")
    c.add_argument("--chunk-rows", type=int, default=256, help="rows per resumable chunk (default 256)")
    c.add_argument("--shard-size", type=int, default=1024, help="latents per shard file (default 1024)")
    c.add_argument("--sink-first-positions", type=int, help="leading positions never recorded (default: the SAE's)")
    c.add_argument("--sink-norm-factor", type=float, help="skip positions with norm > factor x median (0 = off)")
    c.add_argument("--no-sinks", action="store_true", help="record every position, sinks included")
    c.add_argument("--threads", type=int)
    c.add_argument("--overwrite", action="store_true", help="replace a cache made with other arguments")
    c.set_defaults(fn=cmd_cache)
