"""Automated interpretability commands: cache, explain, score (report, serve-llm: commands/report.py). They are
built from their stage's config dataclass (LatentCacheConfig, ExplainConfig, ScoreConfig), which the
Python API takes too; each command only turns the parsed options into that object."""

from __future__ import annotations

import dataclasses

from ..options import add_config_command, add_dataclass_options, build_config
from . import latent_list


def cmd_cache(a) -> None:
    from ..api.stages import LatentCacheConfig, cache_features

    cache_features(build_config(LatentCacheConfig, a, a.config))


def cmd_explain(a) -> None:
    from ..api.stages import ExplainConfig, explain

    explain(build_config(ExplainConfig, a, a.config, latents=latent_list(a.latents)))


def cmd_score(a) -> None:
    from ..api.stages import ScoreConfig, score

    score(build_config(ScoreConfig, a, a.config, latents=latent_list(a.latents)))


def _latents_command(sub, name: str, cls, fn, help: str, description: str):
    """add_config_command, except --latents: its words (`0-9,12` or `0 1 2`) become the field's ids in the
    command (`latent_list`), so the config holds list[int] for the Python API too."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help="JSON or TOML file with option values (command line wins; default: none)")
    add_dataclass_options(p, cls, skip=("latents",))
    field = next(f for f in dataclasses.fields(cls) if f.name == "latents")
    action = p.add_argument("--latents", nargs="+", help=field.metadata["help"])
    action.config_field = (cls, "latents")  # the field it fills (tests/test_command_options.py)
    p.set_defaults(fn=fn)


def register(sub) -> None:
    from ..features.cache_config import LatentCacheConfig
    from ..interpret.config import ExplainConfig, ScoreConfig

    add_config_command(
        sub,
        "cache",
        LatentCacheConfig,
        cmd_cache,
        help="cache the active latents of SAEs (and/or MLP neurons) over N tokens",
        description="Run the model once over --tokens tokens and store every active latent sparsely "
        "(row, position, latent, value), sharded by latent range, tokens stored once. "
        "Rerun the same command to resume an interrupted run. Format: docs/INTERPRET.md.",
    )
    _latents_command(
        sub,
        "explain",
        ExplainConfig,
        cmd_explain,
        help="explain latents of a cached dictionary with an LLM (or the statistical baseline)",
        description="Draw examples for each latent from a latent cache, explain it, and append one "
        "record per latent to OUT/explanations.jsonl (a rerun skips latents already done).",
    )
    _latents_command(
        sub,
        "score",
        ScoreConfig,
        cmd_score,
        help="score the explanations of a run",
        description="Score each explained latent with each scorer; one record per latent is appended "
        "to RUN/scores_SCORER.jsonl (a rerun skips latents already scored).",
    )
