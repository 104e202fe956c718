"""MkDocs hook: lists render as GitHub renders them, since the pages are written (and read) there too.

Python-Markdown, unlike GitHub, needs a blank line between a paragraph and the list that follows it (else
the items run on as one paragraph) and four spaces, not two, before a nested item. Outside fenced code,
this hook adds the blank line and doubles a two-space nesting indent; the files themselves stay as written."""

from __future__ import annotations

import re

ITEM = re.compile(r"^( *)([-*]|\d+[.)]) \S")  # no "+": the pages wrap lines that start "+ x" as text
FENCE = re.compile(r"^\s*(```|~~~)")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return "\n".join(github_lists(markdown.split("\n")))


def github_lists(lines: list[str]) -> list[str]:
    out: list[str] = []
    fenced = False
    in_list = False  # inside a list block: from an item to the next blank line followed by unindented text
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
            out.append(line)
            continue
        if fenced:
            out.append(line)
            continue
        item = ITEM.match(line)
        prev = out[-1] if out else ""
        starts = item and (item.group(2)[0] in "-*" or item.group(2)[:-1] == "1")  # CommonMark: which may
        if starts and not in_list and prev.strip() and not prev.lstrip().startswith(("#", "|", ">")):
            out.append("")  # interrupt a paragraph; a wrapped line "2024. Then" is not a list
        if item and (in_list or starts):
            in_list = True
            indent = len(item.group(1))
            if indent % 4 == 2:  # two-space nesting: each level is four spaces here
                line = " " * (indent * 2) + line[indent:]
        elif not line.strip():
            pass
        elif not line.startswith(" ") and not prev.strip():
            in_list = False
        out.append(line)
    return out
