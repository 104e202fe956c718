"""MkDocs hook: the CLI reference page (reference/cli.md), generated from the argparse parsers at build time.

The parsers in saelab/cli.py are the one source of every subcommand, option, default and help line; this
page renders them, so it cannot drift from `saelab COMMAND --help` and no generated file is committed.
Help text goes into raw HTML tables (escaped), not Markdown: help strings hold globs ('*', '**'), arrows
('A->B') and pipes that Markdown would read as emphasis, tags or table cells."""

from __future__ import annotations

import argparse
import html

from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"
NOWRAP = ' style="white-space: nowrap"'  # a command or option on one line; the help column wraps
USAGE_WIDTH = 100  # columns of the usage blocks: fixed, so the page does not depend on the builder's terminal


def on_files(files: Files, config) -> Files:
    from saelab.cli import build_parser

    files.append(File.generated(config, PAGE, content=cli_markdown(build_parser())))
    return files


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The whole page: an index of the subcommands, then one section per subcommand (nested ones too)."""
    commands = list(_subcommands(parser, parser.prog))
    lines = [
        "# CLI reference",
        "",
        "Generated from the command-line parsers (`saelab.cli.build_parser`) each time the site is built:",
        "every subcommand, every option and its default, exactly as `saelab COMMAND --help` prints them.",
        "What each command is for, with worked examples, is in [Commands](../COMMANDS.md).",
        "",
        "<table><thead><tr><th>command</th><th>what it does</th></tr></thead><tbody>",
    ]
    for path, _, summary in commands:
        lines.append(f'<tr><td{NOWRAP}><a href="#{_anchor(path)}"><code>{html.escape(path)}</code></a></td>')
        lines.append(f"<td>{html.escape(summary or '')}</td></tr>")
    lines += ["</tbody></table>", ""]
    for path, sub, summary in commands:
        lines += _command_section(path, sub, summary)
    return "\n".join(lines) + "\n"


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    """(`saelab cmd [subcmd]`, parser, one-line help) of every subcommand, depth first, in registration order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            if helps.get(name) == argparse.SUPPRESS:
                continue
            path = f"{prefix} {name}"
            yield path, sub, helps.get(name)
            yield from _subcommands(sub, path)


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def _command_section(path: str, parser: argparse.ArgumentParser, summary: str | None) -> list[str]:
    level = "#" * min(path.count(" ") + 1, 4)
    lines = [f"{level} {path} {{ #{_anchor(path)} }}", ""]
    text = parser.description or summary
    if text:
        lines += [html.escape(text), ""]
    fmt = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    lines += ["```text", fmt.format_help().strip(), "```", ""]
    for group in parser._action_groups:
        rows = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        rows = [a for a in rows if not isinstance(a, argparse._SubParsersAction)]
        if not rows:
            continue
        lines.append(f"<p><strong>{html.escape(group.title or 'options')}</strong></p>")
        if group.description:
            lines.append(f"<p>{html.escape(group.description)}</p>")
        lines.append("<table><tbody>")
        for action in rows:
            invocation = html.escape(fmt._format_action_invocation(action))
            helptext = html.escape(fmt._expand_help(action)) if action.help else ""
            lines.append(f"<tr><td{NOWRAP}><code>{invocation}</code></td><td>{helptext}</td></tr>")
        lines += ["</tbody></table>", ""]
    if parser.epilog:
        lines += [html.escape(parser.epilog), ""]
    return lines
