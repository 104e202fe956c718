"""Autointerp: an interpretation run (`saelab explain` / `saelab score`), summarised by the interpret
stage (`interpret.bench_summary.autointerp_summary`) before the bench starts and handed in as
`state.interp`: evaluation does not import a later stage. Needs no model."""

from __future__ import annotations

from .metric import BenchState, Metric, Table


def compute(b: BenchState) -> dict:
    return dict(b.interp)


def tables(ai: dict) -> list[Table]:
    rows = [
        [s, v["scored"], m, st["mean"], _validity(v.get("validity"))]
        for s, v in ai["scorers"].items()
        for m, st in v["primary"].items()
    ]
    return [
        (
            f"Autointerp ({ai['label']}: {ai['explained']}/{ai['latents']} latents explained)",
            ["scorer", "scored", "metric", "mean", "own vs shuffled explanation (AUC, 95% CI)"],
            rows,
        )
    ]


def _validity(v: dict | None) -> str:
    """The scorer's right-vs-wrong AUC (`saelab score --validity`); a scorer at chance says so."""
    if not v:
        return "not checked"
    if v["verdict"] == "n/a":
        return f"n/a (n={v['n']})"
    return f"{v['auc']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}], n={v['n']}: {v['verdict']}"


def panel(ax, ai: dict, l0s: dict) -> None:
    items = [(f"{s}:{k}", v["mean"]) for s, sc in ai["scorers"].items() for k, v in sc["primary"].items()]
    ax.bar(range(len(items)), [v for _, v in items])
    ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=30, ha="right", fontsize=6)
    ax.set_title(f"autointerp: {ai['label']}")


METRIC = Metric(
    "autointerp",
    "scores of an interpretation run's explanations (--interp), per scorer",
    compute,
    tables,
    panel,
    needs_interp=True,
)
