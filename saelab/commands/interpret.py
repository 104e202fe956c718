"""Automated interpretability commands: cache, explain, score, report, serve-llm. cache, explain and score
are built from their stage's config dataclass (LatentCacheConfig, ExplainConfig, ScoreConfig), which the
Python API takes too; each command only turns the parsed options into that object."""

from __future__ import annotations

import dataclasses

from ..options import THREADS_HELP, add_config_command, add_dataclass_options, build_config
from . import latent_list


def cmd_cache(a) -> None:
    from ..features.cache_config import LatentCacheConfig
    from ..features.latent_cache_writer import write_latent_cache

    write_latent_cache(build_config(LatentCacheConfig, a, a.config))


def cmd_explain(a) -> None:
    from ..interpret.config import ExplainConfig
    from ..interpret.pipeline import explain

    explain(build_config(ExplainConfig, a, a.config, latents=latent_list(a.latents)))


def cmd_score(a) -> None:
    from ..interpret.config import ScoreConfig
    from ..interpret.pipeline import score

    n = score(build_config(ScoreConfig, a, a.config, latents=latent_list(a.latents)))
    print("saelab: scored " + ", ".join(f"{k}: {v} latents" for k, v in n.items()) + f" -> {a.run}")


def _latents_command(sub, name: str, cls, fn, help: str, description: str):
    """add_config_command, except --latents: its words (`0-9,12` or `0 1 2`) become the field's ids in the
    command (`latent_list`), so the config holds list[int] for the Python API too."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help="JSON or TOML file with option values (command line wins; default: none)")
    add_dataclass_options(p, cls, skip=("latents",))
    field = next(f for f in dataclasses.fields(cls) if f.name == "latents")
    p.add_argument("--latents", nargs="+", help=field.metadata["help"])
    p.set_defaults(fn=fn)


def cmd_report(a) -> None:
    from ..interpret.report import report

    report(a.runs, a.out, overwrite=a.overwrite)


def cmd_serve(a) -> None:
    from ..interpret.llm_server import serve

    serve(a.model, a.host, a.port, a.batch_size, a.batch_wait, max_tokens_cap=a.max_tokens_cap, max_body=a.max_body)


def register(sub) -> None:
    from ..features.cache_config import LatentCacheConfig
    from ..interpret.config import ExplainConfig, ScoreConfig

    add_config_command(sub, "cache", LatentCacheConfig, cmd_cache,
                       help="cache the active latents of SAEs (and/or MLP neurons) over N tokens",
                       description="Run the model once over --tokens tokens and store every active latent sparsely "
                                   "(row, position, latent, value), sharded by latent range, tokens stored once. "
                                   "Rerun the same command to resume an interrupted run. Format: docs/INTERPRET.md.")
    _latents_command(sub, "explain", ExplainConfig, cmd_explain,
                     help="explain latents of a cached dictionary with an LLM (or the statistical baseline)",
                     description="Draw examples for each latent from a latent cache, explain it, and append one "
                                 "record per latent to OUT/explanations.jsonl (a rerun skips latents already done).")
    _latents_command(sub, "score", ScoreConfig, cmd_score, help="score the explanations of a run",
                     description="Score each explained latent with each scorer; one record per latent is appended "
                                 "to RUN/scores_SCORER.jsonl (a rerun skips latents already scored).")

    r = sub.add_parser("report", help="summarise and compare interpretation runs (table + PNG plots)")
    r.add_argument("runs", nargs="+", help="run folders; with several, the first is compared with each other one")
    r.add_argument("--out", help="report folder (default: the run folder, or RUN1/compare)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing report.md / report.json in --out")
    r.set_defaults(fn=cmd_report)

    v = sub.add_parser("serve-llm", help="serve a local chat model through an OpenAI-compatible HTTP API",
                       description="POST /v1/chat/completions (with logprobs/top_logprobs), GET /v1/models. Concurrent "
                                   "requests are batched. Binds to loopback by default.")
    v.add_argument("--model", default="embedded", help="embedded | local folder | .gguf | hub id (default embedded)")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)")
    v.add_argument("--port", type=int, default=8000, help="port (0 = any free port; the URL is printed; default 8000)")
    v.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    v.add_argument("--batch-wait", type=float, default=0.01, help="seconds to wait for more requests to batch")
    v.add_argument("--max-tokens-cap", type=int, default=1024,
                   help="largest max_tokens a request may ask for; more is a 400 (default 1024)")
    v.add_argument("--max-body", type=int, default=1 << 20,
                   help="largest request body in bytes, refused with 413 before it is read (default 1048576)")
    v.add_argument("--threads", type=int, help=THREADS_HELP)
    v.set_defaults(fn=cmd_serve)
