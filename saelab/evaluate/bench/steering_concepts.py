"""The steering benchmark's concepts, drawn by rule from the sources of the embedded corpus (the Python
standard library and the pydoc topics, data.builtin_texts), so the benchmark runs offline and the same
everywhere. Each concept is a set of short texts (snippets) that show it, and an instruction naming it
(the prompting method):

  python_code    the source of stdlib functions (the definition line and body), docstring and comment lines removed
  error_message  the message of `raise SomeError("...")` (a string literal of at least 25 characters)
  code_comment   runs of consecutive `#` comment lines (at least 60 characters; shebang / coding lines and
                 rules of dashes left out)
  numbers        lines whose visible characters are at least 40% digits (constants, tables of code points)
  html_markup    string literals holding at least two tags of HTML elements (pydoc's and the html / xml
                 modules' templates; regular expressions, `(?P<...>`, are left out)

The rest (what a concept is told apart from) is the other concepts' snippets plus English prose: paragraphs
of the pydoc topics (`PROSE`). SQL, dates and file paths were considered: the stdlib holds about ten SQL
strings and ~70 path literals, too few for a judge, so they are not concepts here.

Snippets are deduplicated, drawn with a seeded generator from every candidate, and cut to SNIPPET_TOKENS
tokens by the caller (a steered continuation is about that long)."""

from __future__ import annotations

import ast
import functools
import re
import textwrap

import numpy as np

from ...errors import UserError
from .tasks import _parsed, _stdlib_files

PROSE = "prose"  # the extra negative pool (not a concept)
CONCEPTS: dict[str, tuple[str, str]] = {  # name -> (what it is, the prompting method's instruction)
    "python_code": ("source of Python functions", "Write Python code."),
    "error_message": ("the message of a raised exception", "Write an error message."),
    "code_comment": ("'#' comment lines of Python source", "Write a code comment."),
    "numbers": ("lines mostly made of digits", "Write a list of numbers."),
    "html_markup": ("HTML markup (tags)", "Write HTML markup."),
}
HTML_TAGS = set(
    "a b i p br hr dl dt dd tt em ul ol li tr td th div pre big code font form html head body span small "
    "table title input strong h1 h2 h3 h4 h5 h6 img link meta style script".split()
)
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]*)[^<>]*>")
_RULE = re.compile(r"^#\s*[-=#*~]*\s*$")


def check_concepts(names: list[str] | None) -> list[str]:
    """The concepts to run (None: all), each once; an unknown name is a UserError naming the known ones."""
    if not names:
        return list(CONCEPTS)
    bad = [n for n in names if n not in CONCEPTS]
    if bad:
        raise UserError(f"unknown steering concept(s) {', '.join(bad)}; choose from {', '.join(CONCEPTS)}")
    return list(dict.fromkeys(names))


def _code_of(node, lines: list[str]) -> str:
    """A definition's source without its docstring and comment lines."""
    src = lines[node.lineno - 1 : node.end_lineno]
    body = node.body[0]
    if isinstance(body, ast.Expr) and isinstance(getattr(body, "value", None), ast.Constant):
        if isinstance(body.value.value, str):  # drop the docstring's lines
            a, b = body.lineno - node.lineno, body.end_lineno - node.lineno + 1
            src = src[:a] + src[b:]
    return textwrap.dedent("\n".join(ln for ln in src if ln.strip() and not ln.strip().startswith("#")))


def _comment_runs(lines: list[str]) -> list[str]:
    runs, cur = [], []
    for ln in lines + [""]:
        s = ln.strip()
        if s.startswith("#") and not s.startswith("#!") and "coding" not in s and not _RULE.match(s):
            cur.append(s)
            continue
        text = "\n".join(cur)
        if len(text) >= 60:
            runs.append(text)
        cur = []
    return runs


def _is_numbers(line: str) -> bool:
    vis = line.replace(" ", "")
    return len(line) >= 20 and sum(c.isdigit() for c in vis) >= 0.4 * len(vis)


def _is_html(s: str) -> bool:
    if "(?P<" in s or "\\" in s or len(s.strip()) < 20:
        return False
    return sum(t.lower() in HTML_TAGS for t in _TAG.findall(s)) >= 2


@functools.lru_cache(maxsize=4)  # one walk of the stdlib per process and size
def candidates(need: int | None = None) -> dict[str, tuple[str, ...]]:
    """The candidate snippets of every concept (and the prose pool), deduplicated, in file order: from
    every stdlib file, or (`need`) from the files in sorted order until each concept has `need` of them
    (a small benchmark parses a fraction of the stdlib)."""
    out: dict[str, dict[str, None]] = {name: {} for name in [*CONCEPTS, PROSE]}
    for path in _stdlib_files():
        if need and all(len(out[c]) >= need for c in CONCEPTS):
            break
        parsed = _parsed(path)
        if parsed is None:
            continue
        tree, lines = parsed
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 3:
                out["python_code"][_code_of(node, lines)] = None
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                a = node.exc.args[0]
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and len(a.value) >= 25:
                    out["error_message"][a.value.strip()] = None
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_html(node.value):
                out["html_markup"][node.value.strip()] = None
        for run in _comment_runs(lines):
            out["code_comment"][run] = None
        for ln in lines:
            if _is_numbers(ln.strip()):
                out["numbers"][ln.strip()] = None
    from pydoc_data import topics

    for key in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            para = " ".join(para.split())
            if len(para) >= 120 and not para.startswith((">>>", "...")):
                out[PROSE][para] = None
    return {k: tuple(v) for k, v in out.items()}


def draw_snippets(names: list[str], per_concept: int, seed: int = 0) -> dict[str, list[str]]:
    """`per_concept` snippets of each concept in `names` and of the prose pool, drawn with `seed`; a
    concept with fewer candidates keeps all it has (the caller reports the counts)."""
    pool = candidates(3 * per_concept)
    out = {}
    for i, name in enumerate([*names, PROSE]):
        c = pool[name]
        pick = np.random.default_rng(seed + 7919 * (i + 1)).permutation(len(c))[:per_concept]
        out[name] = [c[j] for j in sorted(pick)]
    return out
