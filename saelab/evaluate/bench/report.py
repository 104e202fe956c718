"""report.md and report.html of a bench folder, rendered from the metric JSON dicts (the same
objects written to <metric>.json), so the report shows exactly what the files hold.

Each section is a list of tables (title, header, rows); numbers are formatted by `fmt` (3 decimals),
the form tests/test_bench.py reads back."""

from __future__ import annotations

import html
from pathlib import Path

from ...storage import write_text

Table = tuple[str, list[str], list[list]]


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def core_tables(core: dict) -> list[Table]:
    cols = ["l0", "fvu", "cosine", "dead_fraction", "ce_increase", "kl", "ce_recovered_zero"]
    rows = [[r["dictionary"]] + [r.get(c) for c in cols] for r in core["dictionaries"]]
    return [("Core (held-out reconstruction and splice; SAEs only)", ["dictionary"] + cols, rows)]


def probing_tables(probing: dict) -> list[Table]:
    ks = probing["ks"]
    res = probing["dictionaries"]
    mean = [[r["dictionary"], r["kind"]] + [r["mean_accuracy"][str(k)] for k in ks] + [r["mean_ceiling"]] for r in res]
    out = [
        (
            "Sparse probing: mean held-out accuracy over tasks",
            ["dictionary", "kind"] + [f"k={k}" for k in ks] + ["full site"],
            mean,
        )
    ]
    tasks = [t["task"] for t in res[0]["tasks"]] if res else []
    for k in (1, 5):
        if k in ks:
            rows = [[r["dictionary"]] + [t["accuracy"][str(k)] for t in r["tasks"]] for r in res]
            out.append((f"Sparse probing per task, k={k}", ["dictionary"] + tasks, rows))
    return out


def absorption_tables(ab: dict) -> list[Table]:
    rows = [
        [
            r["dictionary"],
            r["applicable"],
            r["mean_absorption_rate"],
            r["mean_absorption_fraction"],
            r["mean_split_features"],
        ]
        for r in ab["dictionaries"]
    ]
    head = (
        f"Absorption (first letter): probe accuracy {fmt(ab['probe_accuracy'])} (chance {fmt(ab['chance'])}), "
        f"{ab['n_words']} words, {len(ab['letters'])} letters"
        + (" -- WEAK: the site encodes first letters too weakly for this metric to mean much" if ab["weak"] else "")
    )
    return [(head, ["dictionary", "applicable", "absorption rate", "absorption fraction", "split features"], rows)]


def autointerp_tables(ai: dict) -> list[Table]:
    rows = [[s, v["scored"], m, st["mean"]] for s, v in ai["scorers"].items() for m, st in v["primary"].items()]
    return [
        (
            f"Autointerp ({ai['label']}: {ai['explained']}/{ai['latents']} latents explained)",
            ["scorer", "scored", "metric", "mean"],
            rows,
        )
    ]


def synthetic_tables(sy: dict) -> list[Table]:
    cols = ["recovered", "mmcs_truth", "mmcs_decoder", "latent_precision", "latent_recall", "dead", "l0"]
    rows = [
        [r["dictionary"]]
        + (
            [r["report"].get(c) for c in cols]
            if r.get("report")
            else [r.get("error", "n/a")] + [None] * (len(cols) - 1)
        )
        for r in sy["dictionaries"]
    ]
    return [("Synthetic ground truth", ["dictionary"] + cols, rows)]


RENDER = {
    "core": core_tables,
    "probing": probing_tables,
    "absorption": absorption_tables,
    "autointerp": autointerp_tables,
    "synthetic": synthetic_tables,
}


def _tables(results: dict[str, dict]) -> list[Table]:
    return [t for m, r in results.items() for t in RENDER[m](r)]


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
