"""MkDocs hook: the API reference page (reference/api.md), one mkdocstrings entry per name in `saelab.__all__`.

`saelab` re-exports its public names lazily (a module `__getattr__`), which a static reader such as griffe
cannot follow; so the page is written at build time from `saelab.__all__` itself: each name is resolved,
and documented where it is defined (`::: saelab.api.model.Model`) under its public spelling
(`saelab.Model`). A name added to `__all__` is on the page at the next build, and a public name without a
docstring, or one that is neither a class nor a function, is a warning (a failed `mkdocs build --strict`)."""

from __future__ import annotations

import dataclasses
import html
import importlib
import inspect

from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

PAGE = "reference/api.md"
log = get_plugin_logger(__name__)

INTRO = """# API reference

The public Python API is exactly what `saelab.__all__` lists, used as `import saelab` then `saelab.NAME`.
Everything else in the package (every module under `saelab.` and the names in it) is private: it may
change or move in any release without notice. Importing `saelab` is cheap: each name below is imported
(with torch) the first time it is used.

This page is generated from `saelab.__all__` and the docstrings each time the site is built.
"""


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, PAGE, content=api_markdown(importlib.import_module("saelab"))))
    return files


def public_objects(package) -> list[tuple[str, object, str]]:
    """(public name, object, the dotted path where it is defined) for each name in `package.__all__`."""
    out = []
    for name in getattr(package, "__all__", []):
        if name.startswith("__") and name.endswith("__"):  # `__version__` and the like: not API to document
            continue
        obj = documented(getattr(package, name))
        module = inspect.getmodule(obj)
        if inspect.ismodule(obj):
            log.warning(
                f"saelab.{name} is the module {obj.__name__}: a subpackage of that name, once imported, hides the "
                f"lazy public name (saelab.{name}(...) then fails); give one of the two another name"
            )
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or module is None:
            log.warning(f"saelab.{name} is a {type(obj).__name__}: the API page documents classes and functions")
            continue
        if not _own_doc(obj):
            log.warning(
                f"saelab.{name} ({inspect.getsourcefile(obj)}) has no docstring of its own: every public name needs one"
            )
        out.append((name, obj, f"{module.__name__}.{obj.__qualname__}"))
    return out


def documented(obj):
    """What a public name documents: itself, or for a wrapper (an object with `__wrapped__`, as
    functools.wraps and proxies set it) the function it stands for."""
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        return obj
    try:
        return inspect.unwrap(obj)
    except ValueError:  # a cycle of __wrapped__
        return obj


def _own_doc(obj) -> str:
    """The docstring the author wrote: not one inherited, nor the signature `@dataclass` writes in its place."""
    doc = inspect.getdoc(obj) if inspect.isfunction(obj) else obj.__dict__.get("__doc__")
    if doc and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return inspect.cleandoc(doc) if doc else ""


def _fields_table(cls) -> list[str]:
    """A dataclass's fields as a table: name, type, default as the code computes it, and the option help the
    CLI shows (`metadata["help"]`). The signature griffe would print shows each default as the source
    expression (`opt(...)` calls), which says nothing to a reader, so config classes (those whose fields
    carry option help) show this instead; other dataclasses keep their signature."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        kind = f.type if isinstance(f.type, str) else inspect.formatannotation(f.type)
        cells = [f"<code>{f.name}</code>", f"<code>{html.escape(kind)}</code>", f"<code>{html.escape(default)}</code>"]
        cells.append(html.escape(str(f.metadata.get("help", ""))))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<thead><tr><th>field</th><th>type</th><th>default</th><th>meaning</th></tr></thead>"
    return ["<p><strong>Fields</strong></p>", f"<table>{head}<tbody>", *rows, "</tbody></table>", ""]


def api_markdown(package) -> str:
    objects = public_objects(package)
    lines = [INTRO]
    if not objects:
        return "\n".join(lines + ["`saelab.__all__` is empty in this version: there are no public names yet.", ""])
    sections = [
        ("Functions", [o for o in objects if inspect.isfunction(o[1])]),
        ("Classes", [o for o in objects if inspect.isclass(o[1])]),
    ]
    lines += ["| name | summary |", "|---|---|"]  # Markdown: the summaries' `code` renders
    for _, members in sections:
        for name, obj, path in members:
            summary = _own_doc(obj).split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
            link = f'<a href="#{path}"><code style="white-space: nowrap">saelab.{name}</code></a>'
            lines.append(f"| {link} | {summary} |")
    lines.append("")
    for title, members in sections:
        if not members:
            continue
        lines += [f"## {title}", ""]
        for name, obj, path in members:
            fields = dataclasses.is_dataclass(obj) and any("help" in f.metadata for f in dataclasses.fields(obj))
            lines += [f"::: {path}", "    options:", f"      heading: saelab.{name}", f"      toc_label: saelab.{name}"]
            lines += ["      show_signature: false", ""] + _fields_table(obj) if fields else [""]
    return "\n".join(lines)
