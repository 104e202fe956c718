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
    succeed are taken as positionals; when none does, the plain parse's own error is shown."""

    def attempt(args):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns = parser.parse_args(args)
        except SystemExit as e:
            if e.code == 0:  # --help
                raise
            return None
        sys.stderr.write(err.getvalue())  # warnings of a parse that worked (e.g. a deprecated spelling)
        return ns

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        ns = attempt(argv)
        if ns is not None:
            return ns
        # the value runs of options (an option and the plain words after it), last run first; from each,
        # move its last k words (never all of them) behind a `--`: `--latents 1 2 CACHE --out R`
        # -> `--latents 1 2 --out R -- CACHE`
        starts = [i for i, t in enumerate(argv) if t.startswith("-")]
        for i in reversed(starts):
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            for k in range(1, j - i - 1):
                moved = argv[j - k : j]
                ns = attempt(argv[: j - k] + argv[j:] + ["--"] + moved)
                if ns is not None:
                    return ns
    return parser.parse_args(argv)


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
