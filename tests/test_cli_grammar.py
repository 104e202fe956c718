"""One CLI grammar: every option of every subcommand (walked from saelab.cli.build_parser) has help
and names its default; one flag name per destination; one latent-list syntax (`0-9,12` and `0 1 2`)
wherever latents are chosen; positionals written after a multi-value option are not swallowed."""

import argparse
import collections
import dataclasses

import pytest

from saelab.cli import build_parser
from saelab.commands import LATENTS_HELP, latent_list, parse_args
from saelab.errors import UserError


def _subparsers():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, sub.choices


def test_every_option_has_help_and_shows_its_default():
    _, subs = _subparsers()
    assert len(subs) > 15
    missing = []
    for name, sp in subs.items():
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if not a.help or not a.help.strip():
                missing.append(f"{name} {a.dest}: no help")
            elif (
                a.option_strings
                and a.default not in (None, False, [], argparse.SUPPRESS)
                and "default" not in a.help.lower()
            ):
                missing.append(f"{name} {'/'.join(a.option_strings)}: default {a.default!r} not in its help")
        sp.format_help()  # every help renders
    assert missing == []


def _own_flag(action) -> str | None:
    cls, name = getattr(action, "config_field", (None, None))
    return cls and next((f.metadata.get("flag") for f in dataclasses.fields(cls) if f.name == name), None)


def test_one_flag_per_destination_and_one_destination_per_flag(capsys):
    _, subs = _subparsers()
    flags, dests = collections.defaultdict(set), collections.defaultdict(set)
    for sp in subs.values():
        for a in sp._actions:
            for o in a.option_strings:
                if o.startswith("--") and not o.startswith("--no-"):
                    dests[o].add(a.dest)
            longs = [o for o in a.option_strings if o.startswith("--") and not o.startswith("--no-")]
            if longs:  # a field declared with its own flag (TrainConfig.latents: --dict-size) is its own meaning
                flags[_own_flag(a) or a.dest].add(longs[0])
    assert {o: d for o, d in dests.items() if len(d) > 1} == {}
    assert {d: f for d, f in flags.items() if len(f) > 1} == {}
    # the cache budget of steer is --tokens, as in dashboard and serve (old spelling kept)
    p, _ = _subparsers()
    assert parse_args(p, ["steer", "S", "--prompt", "x", "--stats-tokens", "99"]).tokens == 99
    assert "--stats-tokens is an old spelling; use --tokens" in capsys.readouterr().err
    assert parse_args(p, ["steer", "S", "--prompt", "x", "--tokens", "99"]).tokens == 99
    assert capsys.readouterr().err == ""


def test_every_latents_option_takes_both_list_syntaxes():
    p, subs = _subparsers()
    positional = {"explain": ["CACHE", "--out", "o"], "score": ["RUN"], "dashboard": ["SAE", "--out", "o"]}
    # (train / sweep / scaling: --dict-size, the dictionary size; --latents there is its old spelling)
    with_latents = [
        n
        for n, sp in subs.items()
        if any("--latents" in a.option_strings and LATENTS_HELP in a.help for a in sp._actions)
    ]
    assert sorted(with_latents) == sorted(positional)
    for name in with_latents:
        for spelling in (["0-2,5"], ["0", "1", "2", "5"], ["0-1", "2,5"]):
            ns = parse_args(p, [name, *positional[name], "--latents", *spelling])
            assert latent_list(ns.latents) == [0, 1, 2, 5], (name, spelling)
    with pytest.raises(UserError, match="outside"):
        latent_list(["3-12"], 10)


def test_positionals_after_a_multi_value_option_are_not_swallowed(capsys):
    p, _ = _subparsers()
    ns = parse_args(p, ["serve", "--cache", "C", "SAE"])
    assert ns.sae == ["SAE"] and ns.cache == ["C"]
    ns = parse_args(p, ["explain", "--out", "o", "--latents", "1", "2", "CACHE"])
    assert ns.cache == "CACHE" and ns.latents == ["1", "2"]
    ns = parse_args(p, ["explain", "--latents", "1", "2", "CACHE", "--out", "o"])  # swallowed in the middle
    assert ns.cache == "CACHE" and ns.latents == ["1", "2"] and ns.out == "o"
    ns = parse_args(p, ["dashboard", "--latents", "0-3", "SAE", "--out", "d", "--tokens", "99"])
    assert ns.sae == "SAE" and ns.latents == ["0-3"] and ns.out == "d" and ns.tokens == 99
    ns = parse_args(p, ["serve", "A", "B", "--cache", "C1", "C2"])  # nothing to fix: unchanged
    assert ns.sae == ["A", "B"] and ns.cache == ["C1", "C2"]
    with pytest.raises(SystemExit):  # no positional at all: argparse's own message
        parse_args(p, ["serve", "--cache", "C"])
    assert "required: sae" in capsys.readouterr().err


def test_no_llm_default_that_can_expire(monkeypatch):
    """The Anthropic client has no built-in model name: without --llm (or $SAELAB_LLM_MODEL) it stops
    at once and names the option, before any import or request."""
    from saelab.interpret.clients import make_client

    monkeypatch.delenv("SAELAB_LLM_MODEL", raising=False)
    with pytest.raises(UserError, match="--llm MODEL"):
        make_client("anthropic")
