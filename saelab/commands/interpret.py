"""Automated interpretability commands: cache, explain, score (report, serve-llm: commands/report.py)."""

from __future__ import annotations

from ..options import DTYPE_HELP, DTYPES, THREADS_HELP
from . import LATENTS_HELP, latent_list


def cmd_cache(a) -> None:
    from ..features.latent_cache_writer import build_latent_cache
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
                       shard_size=a.shard_size, sink=sink, split=a.split, overwrite=a.overwrite, dtype=a.dtype)


def _client_opts(a) -> dict:
    return {"concurrency": a.concurrency, "timeout": a.timeout, "max_retries": a.max_retries, "batch_size": a.batch_size,
            "price_in": a.price_in, "price_out": a.price_out}


def _add_client_options(p) -> None:
    g = p.add_argument_group("LLM client")
    g.add_argument("--client", default="local", help="local (a HF chat model in-process) | openai (any OpenAI-compatible "
                                                     "server) | anthropic (default: local)")
    g.add_argument("--llm", dest="llm_model", help="model: for local a model spec (default embedded), for openai/anthropic "
                                                   "the served model name")
    g.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1 (or $OPENAI_BASE_URL)")
    g.add_argument("--concurrency", type=int, default=4, help="parallel requests to an HTTP server (default 4)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    g.add_argument("--max-retries", type=int, default=4, help="retries with exponential backoff (default 4)")
    g.add_argument("--price-in", type=float, default=0.0, help="USD per million prompt tokens, for cost accounting")
    g.add_argument("--price-out", type=float, default=0.0, help="USD per million completion tokens")
    g.add_argument("--threads", type=int, help=THREADS_HELP)
    g.add_argument("--device", default="cpu", help="where local models run: cpu | cuda | cuda:N (default cpu)")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass of the local client (default 8; "
                                                             "64 or more on a GPU)")


def cmd_explain(a) -> None:
    from ..interpret.examples import ExampleConfig
    from ..interpret.pipeline import run_explain

    ecfg = ExampleConfig(window=a.window, peak_index=a.peak_index, n_explain=a.n_explain,
                         explain_sampling=a.explain_sampling, n_score_activating=a.n_score_activating,
                         n_score_random=a.n_score_random, n_score_hard=a.n_score_hard, seed=a.seed)
    from ..errors import UserError

    if a.explain_sampling not in ("top", "quantiles"):
        raise UserError("--explain-sampling must be top or quantiles")
    run_explain(a.cache, a.out, dictionary=a.dictionary, latents=latent_list(a.latents), n_latents=a.n_latents,
                explainer=a.explainer, client=a.client, model=a.llm_model, base_url=a.base_url, example_cfg=ecfg,
                show_activations=a.show_activations, batch_latents=a.batch_latents, seed=a.seed,
                overwrite=a.overwrite, label=a.label, client_opts=_client_opts(a), device=a.device)


def cmd_score(a) -> None:
    from ..interpret.pipeline import run_score

    n = run_score(a.run, a.scorers, client=a.client, model=a.llm_model, base_url=a.base_url, judge_mode=a.judge_mode,
                  batch_examples=a.batch_examples, steer_scale=a.steer_scale, latents=latent_list(a.latents),
                  client_opts=_client_opts(a), device=a.device)
    print("saelab: scored " + ", ".join(f"{k}: {v} latents" for k, v in n.items()) + f" -> {a.run}")


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
    c.add_argument("--threads", type=int, help=THREADS_HELP)
    c.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)
    c.add_argument("--overwrite", action="store_true", help="replace a cache made with other arguments")
    c.set_defaults(fn=cmd_cache)

    from ..interpret.scorers import SCORERS

    e = sub.add_parser("explain", help="explain latents of a cached dictionary with an LLM (or the statistical baseline)",
                       description="Draw examples for each latent from a latent cache, explain it, and append one record "
                                   "per latent to OUT/explanations.jsonl (a rerun skips latents already done).")
    e.add_argument("cache", help="latent cache folder (saelab cache)")
    e.add_argument("--out", required=True, help="run folder")
    e.add_argument("--dictionary", help="which dictionary of the cache (needed when it holds several)")
    e.add_argument("--latents", nargs="+", help=LATENTS_HELP + " (default: --n-latents chosen at random)")
    e.add_argument("--n-latents", type=int, default=200, help="random latents to explain (default 200)")
    e.add_argument("--explainer", default="llm", help="llm | stats (top tokens and contexts, no LLM) (default llm)")
    e.add_argument("--show-activations", action="store_true", help="show activation levels 1-9 after marked tokens")
    e.add_argument("--batch-latents", type=int, default=4, help="latents explained per generation batch (default 4)")
    e.add_argument("--window", type=int, default=32, help="tokens per example (default 32)")
    e.add_argument("--peak-index", type=int, help="position of the peak in the window (default window*3//4)")
    e.add_argument("--n-explain", type=int, default=40, help="examples shown to the explainer (default 40)")
    e.add_argument("--explain-sampling", default="top", help="top | quantiles (default top)")
    e.add_argument("--n-score-activating", type=int, default=50, help="activating scoring examples (default 50)")
    e.add_argument("--n-score-random", type=int, default=25, help="random non-activating scoring examples (default 25)")
    e.add_argument("--n-score-hard", type=int, default=25, help="hard-negative scoring examples (default 25)")
    e.add_argument("--seed", type=int, default=0, help="seed for latent and example sampling (default 0)")
    e.add_argument("--label", help="name of this run in reports (default: the folder name)")
    e.add_argument("--overwrite", action="store_true", help="replace a run made with other settings")
    _add_client_options(e)
    e.set_defaults(fn=cmd_explain)

    s = sub.add_parser("score", help="score the explanations of a run",
                       description="Score each explained latent with each scorer; one record per latent is appended to "
                                   "RUN/scores_SCORER.jsonl (a rerun skips latents already scored).")
    s.add_argument("run", help="run folder (saelab explain)")
    s.add_argument("--scorers", nargs="+", default=["embedding", "surprisal"], help=f"any of {' '.join(SCORERS)} "
                                                                                    f"(default: embedding surprisal)")
    s.add_argument("--judge-mode", default="auto", help="detection/fuzzing: logprob (P(Yes), one prompt per example) | "
                                                        "generate (a parsed 0/1 list per prompt) | auto (default)")
    s.add_argument("--batch-examples", type=int, default=10, help="examples per prompt in generate mode (default 10)")
    s.add_argument("--steer-scale", type=float, default=2.0, help="intervention: steering = scale x max activation x "
                                                                  "decoder row (default 2)")
    s.add_argument("--latents", nargs="+", help=LATENTS_HELP + " (default: every explained latent)")
    _add_client_options(s)
    s.set_defaults(fn=cmd_score)
    # report and serve-llm: commands/report.py
