"""Subcommands of `saelab`, one module per stage (hookpoints, train, evaluate, study, interop, interpret,
report, view, circuits, synthetic); each module has `register(subparsers)` and adds its own commands.

A command is a thin shell over its stage: its options are the fields of the stage's config dataclass
(`add_config_command`, options.py; `--config FILE` included), it builds that config (`build_config`)
and calls the stage function that the library exposes with the same dataclass. To add a command,
declare the config next to its stage, write `register` with `add_config_command`, and list the
module in COMMAND_MODULES (tests/test_command_options.py checks every option is a config field).

The one CLI grammar every command shares lives here: `latent_list` (`--latents 0-9,12` or `0 1 2`),
`parse_args` (positionals never swallowed by a multi-value option), `show_defaults` (every default
in --help), `OldSpelling` (a renamed flag keeps working, with a notice); the first and last are defined
in options.py. tests/test_cli_grammar.py."""

import argparse as _argparse
import contextlib
import io
import os
import sys

# the option grammar lives in options.py, next to the config dataclasses that use it; named here too
from ..options import LATENTS_HELP, OldSpelling, latent_list  # noqa: F401

COMMAND_MODULES = [
    "saelab.commands.hookpoints",
    "saelab.commands.train",
    "saelab.commands.evaluate",
    "saelab.commands.bench",
    "saelab.commands.study",
    "saelab.commands.interop",
    "saelab.commands.interpret",
    "saelab.commands.report",
    "saelab.commands.view",
    "saelab.commands.circuits",
    "saelab.commands.synthetic",
]


def parse_args(parser, argv: list[str] | None = None):
    """`parser.parse_args`, except that positional arguments written after a multi-value option are not
    swallowed by it: `saelab serve --cache C SAE` reads as `saelab serve --cache C -- SAE`. When the
    plain parse fails, the fewest trailing values of an option (the last option first) that make it
    succeed are taken as positionals; when none does, the plain parse's own error is shown. When it
    works but leaves an optional positional empty, `_claim_optional_positional` looks for it."""

    def attempt(args):
        """(namespace, what the parse wrote to stderr) of a parse that works, else None."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                return parser.parse_args(args), err.getvalue()
        except SystemExit as e:
            if e.code == 0:  # --help
                raise
            return None

    def accept(parsed):
        sys.stderr.write(parsed[1])  # warnings of the parse taken (e.g. a deprecated spelling), once
        return parsed[0]

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        parsed = attempt(argv)
        if parsed is not None:
            return accept(_claim_optional_positional(parser, argv, parsed, attempt))
        # the value runs of options (an option and the plain words after it), last run first; from each,
        # move its last k words (never all of them) behind a `--`: `--latents 1 2 CACHE --out R`
        # -> `--latents 1 2 --out R -- CACHE`
        for i, j in reversed(_value_runs(argv)):
            for k in range(1, j - i - 1):
                moved = argv[j - k : j]
                parsed = attempt(argv[: j - k] + argv[j:] + ["--"] + moved)
                if parsed is not None:
                    return accept(parsed)
    return parser.parse_args(argv)


def _value_runs(argv: list[str]) -> list[tuple[int, int]]:
    """(i, j) of each option argv[i] and the plain words after it, argv[i + 1 : j]."""
    runs = []
    for i in (i for i, t in enumerate(argv) if t.startswith("-")):
        j = i + 1
        while j < len(argv) and not argv[j].startswith("-"):
            j += 1
        runs.append((i, j))
    return runs


def _claim_optional_positional(parser, argv: list[str], parsed, attempt):
    """A parse that worked but left the command's one optional positional empty while the last word of a
    multi-value option names an existing file or folder: that word is the positional (`steer --prompt x
    SAE` is `steer SAE --prompt x`, not the prompts "x" and "SAE" with no SAE). A prompt that is the path
    of an existing file or folder is not one anyone writes; the option keeps at least one word."""
    ns = parsed[0]
    sub = next((a for a in parser._actions if isinstance(a, _argparse._SubParsersAction)), None)
    sp = sub.choices.get(getattr(ns, sub.dest, None)) if sub else None
    empty = [
        a
        for a in (sp._actions if sp else [])
        if not a.option_strings and a.nargs == "?" and getattr(ns, a.dest) is None
    ]
    if len(empty) != 1:
        return parsed
    for i, j in reversed(_value_runs(argv)):
        if j - i > 2 and os.path.exists(argv[j - 1]):
            fixed = attempt(argv[: j - 1] + argv[j:] + ["--", argv[j - 1]])
            if fixed is not None and getattr(fixed[0], empty[0].dest) == argv[j - 1]:
                return fixed
    return parsed


def show_defaults(parser) -> None:
    """Every option of every subcommand names its default in --help: those whose help does not say
    it get `(default: X)` appended (options whose default is None / off need no mention)."""
    for sub in (a for a in parser._actions if isinstance(a, _argparse._SubParsersAction)):
        for sp in sub.choices.values():
            for a in sp._actions:
                d = a.default
                if (
                    not a.option_strings
                    or a.help in (None, _argparse.SUPPRESS)
                    or d in (None, False, _argparse.SUPPRESS)
                    or d == []
                    or "default" in a.help.lower()
                ):
                    continue
                shown = (
                    " ".join(map(str, d))
                    if isinstance(d, (list, tuple))
                    else f"{d:,}"
                    if isinstance(d, int) and not isinstance(d, bool)
                    else str(d)
                )
                a.help = f"{a.help} (default: {shown})"
