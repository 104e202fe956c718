"""`saelab report RUN [RUN ...]`: score distributions per scorer (table + PNG histograms),
explanation failures and costs, and, for several runs (e.g. SAE latents vs neurons), a side-by-side
comparison with the difference of means and its 95% bootstrap interval, paired by latent where the runs
share latents (report_compare.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..option_checks import check_types
from ..options import opt, out_option, overwrite_option
from ..out_folder import finish, hold
from ..storage import refuse_replacing, write_figure, write_json, write_text
from .records import Run, load_run
from .report_compare import compare_runs, comparison_markdown
from .scorers.base import DESCRIPTIONS, PRIMARY
from .validity import run_validity


def _stats(vals: list[float]) -> dict:
    v = np.array([x for x in vals if x is not None and not math.isnan(x)], float)
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "sem": float("nan"), "median": float("nan")}
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "sem": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0,
        "median": float(np.median(v)),
    }


def summarise(run: Run) -> dict:
    latents = run.manifest.get("latents") or sorted(run.explanations)
    recs = [run.explanations.get(j) for j in latents]
    status = [r["status"] if r else "missing" for r in recs]
    ok = [r for r in recs if r and r["status"] == "ok"]
    out = {
        "run": str(run.path),
        "label": run.name,
        "dictionary": run.manifest.get("dictionary"),
        "explainer": run.manifest.get("explainer", {}),
        "latents": len(latents),
        "explained": status.count("ok"),
        "explain_failed": status.count("failed"),
        "skipped_too_few_examples": status.count("skipped"),
        "missing": status.count("missing"),
        "explain_seconds_per_latent": _stats([r["seconds"] for r in ok])["mean"],
        "explain_failures": sorted({(r.get("error") or "")[:80] for r in recs if r and r["status"] == "failed"}),
        "scorers": {},
    }
    for s, by in run.scores.items():
        res = [by[j] for j in latents if j in by]
        good = [r for r in res if r["ok"]]
        metrics = sorted({m for r in good for m in r["metrics"]}, key=lambda m: (m not in PRIMARY.get(s, []), m))
        out["scorers"][s] = {
            "scored": len(good),
            "failed": len(res) - len(good),
            "modes": sorted({r.get("mode", "") for r in res}),
            "seconds_per_latent": _stats([r["seconds"] for r in good])["mean"],
            "failed_examples": int(sum(r.get("n_failed_examples", 0) for r in res)),
            "metrics": {m: _stats([r["metrics"].get(m) for r in good]) for m in metrics},
            "values": {m: [r["metrics"].get(m) for r in good] for m in PRIMARY.get(s, [])},
            "latents": [r["latent"] for r in good],
        }
        if s in run.validity:  # `score --validity`: own explanation vs another latent's
            out["scorers"][s]["validity"] = run_validity(by, run.validity[s], s)
    return out


def validity_markdown(summaries: list[dict]) -> list[str]:
    """The scorer-validity section: per run and scorer, how often a latent's own explanation outscores
    another latent's (right-vs-wrong AUC, 95% bootstrap interval over latents)."""
    rows = [
        (sm["label"], s, d["validity"]) for sm in summaries for s, d in sorted(sm["scorers"].items()) if "validity" in d
    ]
    if not rows:
        return []
    L = ["", "## Scorer validity (own explanation vs another latent's, on the same examples)", ""]
    L.append(
        "| run | scorer | metric | latents | mean own | mean shuffled | right-vs-wrong AUC | 95% interval | verdict |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for label, s, v in rows:
        L.append(
            f"| {label} | {s} | {v['metric']} | {v['n']} | {_fmt(v['mean_right'])} | {_fmt(v['mean_wrong'])} | "
            f"{_fmt(v['auc'])} | [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}] | {v['verdict']} |"
        )
    L.append("")
    L.append(
        "A scorer **at chance** (its interval covers 0.5) does not tell these latents' explanations from shuffled "
        "ones: its scores above measure the scorer, not the explanations."
    )
    return L


def _tag(d: dict) -> str:
    """' (at chance)' after a scorer whose validity check failed, so no reader takes its numbers at face value."""
    v = d.get("validity", {}).get("verdict")
    return f" ({v})" if v in ("at chance", "below chance") else ""


def _fmt(x: float, p: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{p}f}"


def _plots(summaries: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    scorers = sorted({s for sm in summaries for s in sm["scorers"]})
    for s in scorers:
        for m in PRIMARY.get(s, []):
            series = [
                (
                    sm["label"],
                    [
                        v
                        for v in sm["scorers"].get(s, {}).get("values", {}).get(m, [])
                        if v is not None and not math.isnan(v)
                    ],
                )
                for sm in summaries
            ]
            series = [(n, v) for n, v in series if v]
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.5))
            lo = min(min(v) for _, v in series)
            hi = max(max(v) for _, v in series)
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 21)
            for n, v in series:
                ax.hist(v, bins=bins, alpha=0.5, label=f"{n} (mean {np.mean(v):.3f}, n={len(v)})")
            if m in ("auc", "balanced_accuracy"):
                ax.axvline(0.5, color="k", lw=0.8, ls="--")
            ax.set_xlabel(f"{s} {m}")
            ax.set_ylabel("latents")
            ax.legend(fontsize=7)
            ax.set_title(f"{s}: {m}", fontsize=9)
            fig.tight_layout()
            name = f"hist_{s}_{m}.png"
            write_figure(out / name, fig)
            files.append(name)
    return files


def markdown(summaries: list[dict], comparisons: list[dict], plots: list[str]) -> str:
    L = ["# Interpretation report", ""]
    L.append("| run | dictionary | explainer | latents | explained | failed | too few examples | s/latent (explain) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for sm in summaries:
        e = sm["explainer"]
        who = e.get("explainer", "?") + (
            f" ({e.get('client')}: {e.get('model') or e.get('model_name') or ''})"
            if e.get("explainer") == "llm"
            else ""
        )
        L.append(
            f"| {sm['label']} | {sm['dictionary']} | {who} | {sm['latents']} | {sm['explained']} | "
            f"{sm['explain_failed']} | {sm['skipped_too_few_examples']} | {_fmt(sm['explain_seconds_per_latent'], 2)} |"
        )
    L += ["", "## Scores (mean ± standard error over latents; median)", ""]
    L.append(
        "| run | scorer | mode | metric | mean ± sem | median | latents | failed latents | failed examples | s/latent |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for sm in summaries:
        for s, d in sorted(sm["scorers"].items()):
            for m, st in d["metrics"].items():
                if m not in PRIMARY.get(s, []) and m not in (
                    "f1",
                    "precision",
                    "recall",
                    "auc_hard",
                    "mean_gain_activating",
                    "mean_gain_negative",
                ):
                    continue
                L.append(
                    f"| {sm['label']} | {s}{_tag(d)} | {'/'.join(d['modes'])} | {m} | {_fmt(st['mean'])} ± {_fmt(st['sem'])} | "
                    f"{_fmt(st['median'])} | {st['n']} | {d['failed']} | {d['failed_examples']} | "
                    f"{_fmt(d['seconds_per_latent'], 2)} |"
                )
    L += validity_markdown(summaries)
    L += comparison_markdown(comparisons)
    fails = [(sm["label"], f) for sm in summaries for f in sm["explain_failures"]]
    if fails:
        L += ["", "## Explanation failures (distinct reasons)", ""] + [f"- {n}: {f}" for n, f in fails]
    L += ["", "## Metrics", ""] + [f"- **{k}**: {v}" for k, v in DESCRIPTIONS.items()]
    if plots:
        L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(L) + "\n"


@dataclass
class ReportConfig:
    """`saelab report`: summarise one interpretation run, or compare the first with each other one."""

    runs: list[str] = opt(help="run folders; with several, the first is compared with each other one", positional=True)
    out: str | None = out_option("report folder", shown="the run folder, or RUN1/compare")
    overwrite: bool = overwrite_option("an existing report.md / report.json in --out")

    def validate(self) -> None:
        check_types(self)


def write_report(cfg: ReportConfig, quiet: bool = False) -> Path:
    """report.md, report.json and hist_*.png of cfg.runs in cfg.out (printed unless `quiet`); an existing
    report there is replaced only with `overwrite` (checked before any work)."""
    cfg.validate()
    if not cfg.runs:
        raise UserError("give at least one run folder")
    loaded = [load_run(r) for r in cfg.runs]
    out = Path(cfg.out) if cfg.out else (loaded[0].path if len(loaded) == 1 else loaded[0].path / "compare")
    refuse_replacing(out, ("report.md", "report.json"), cfg.overwrite, "report")
    hold(out)  # the folder's lock (made if missing): no other writer while the report is written
    summaries = [summarise(r) for r in loaded]
    labels = [s["label"] for s in summaries]
    for sm, r in zip(summaries, loaded):  # two runs with one label (e.g. a copied run): add the folder
        if labels.count(sm["label"]) > 1:
            sm["label"] = f"{sm['label']} ({r.path.name})"
    comparisons = [  # the first run against each other one: paired by latent where they share latents
        row
        for b, rb in zip(summaries[1:], loaded[1:])
        for row in compare_runs(summaries[0], b, loaded[0].manifest, rb.manifest, PRIMARY)
    ]
    plots = _plots(summaries, out)
    md = markdown(summaries, comparisons, plots)
    write_text(out / "report.md", md)
    write_json(
        out / "report.json",
        {"runs": [{k: v for k, v in s.items()} for s in summaries], "comparisons": comparisons, "plots": plots},
    )
    if not quiet:
        print(md)
        print(f"saelab: report written to {out / 'report.md'}")
    finish(out)
    return out
