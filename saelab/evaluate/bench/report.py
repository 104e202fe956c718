"""report.md and report.html of a bench folder, rendered from the metric JSON dicts (the same
objects written to <metric>.json), so the report shows exactly what the files hold.

Each metric's sections are a list of tables (title, header, rows) that its module renders (the
metric's `tables`, registry.py); numbers are formatted by `fmt` (metric.py: 3 decimals), the form
tests/test_bench.py reads back."""

from __future__ import annotations

import html
from pathlib import Path

from ...storage import write_text
from . import registry
from .metric import Table, fmt

__all__ = ["fmt", "html_page", "markdown", "write_reports"]


def _tables(results: dict[str, dict]) -> list[Table]:
    """Each metric's sections (registry.py: its `tables`), in the order the results were computed."""
    return [t for m, r in results.items() for t in registry.metric(m).tables(r)]


def markdown(manifest: dict, results: dict[str, dict], plot: str | None) -> str:
    lines = [
        f"# saelab bench: {manifest['site']}",
        "",
        f"model `{manifest['model']}`, corpus `{manifest['corpus']}`; wall time "
        + ", ".join(f"{k} {v:.0f} s" for k, v in manifest["wall_s"].items()),
        "",
    ]
    lines += ["| dictionary | kind | site | latents | L0 | source |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {d['name']} | {d['kind']} | {d['site']} | {d['d_lat']} | {fmt(d['l0'])} | {d['source']} |"
        for d in manifest["dictionaries"]
    ]
    for title, header, rows in _tables(results):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    if manifest["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in manifest["notes"]]
    if plot:
        lines += ["", f"![bench]({plot})"]
    return "\n".join(lines) + "\n"


def html_page(manifest: dict, results: dict[str, dict], plot: str | None) -> str:
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>saelab bench</title>",
        "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child{text-align:left}</style>",
        f"<h1>saelab bench: {e(manifest['site'])}</h1><p>model <code>{e(manifest['model'])}</code></p>",
    ]
    tables = [
        (
            "Dictionaries",
            ["dictionary", "kind", "site", "latents", "L0", "source"],
            [[d["name"], d["kind"], d["site"], d["d_lat"], d["l0"], d["source"]] for d in manifest["dictionaries"]],
        )
    ]
    for title, header, rows in tables + _tables(results):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts += [f"<p>{e(n)}</p>" for n in manifest["notes"]]
    if plot:
        parts.append(f"<img src='{e(plot)}' style='max-width:100%'>")
    return "\n".join(parts) + "\n"


def write_reports(out: Path, manifest: dict, results: dict[str, dict], plot: str | None) -> None:
    write_text(out / "report.md", markdown(manifest, results, plot))
    write_text(out / "report.html", html_page(manifest, results, plot))
