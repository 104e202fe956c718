"""What a bench metric is: a `Metric` declaration (registry.py lists them) and the `BenchState` its
`compute` reads, plus the two helpers metric modules share: `fmt` (numbers in report tables, the form
tests/test_bench.py reads back) and `by_l0` (a plot panel over dictionaries).

A metric module declares `METRIC = Metric(name, description, compute, tables, panel, ...)`:
- `compute(state) -> dict`: the metric's JSON (`<name>.json`, "metric": name is put first by the
  runner); it may add notes (`state.notes`) and L0s (`state.l0`). With `needs_model`, `state.lm` and
  `state.rows` hold the model and the held-out rows, opened once for every metric that needs them,
  and `state.dicts` holds the baselines too.
- `tables(json) -> [(title, header, rows)]`: its sections of report.md / report.html.
- `panel(ax, json, l0s)`: its panel of bench.png (None: no panel); `l0s` maps dictionary -> L0."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...storage import write_json

Table = tuple[str, list[str], list[list]]


@dataclass
class BenchState:
    """A bench after its checks: what to run, on which folders, and what is done so far."""

    cfg: Any  # the BenchConfig (config.py reads the registry, so it is not imported here)
    metrics: list[str]
    out: Path
    folders: list
    names: list[str]  # the folders' names, unique: every result is keyed by them
    site: str
    prov: object  # the Provenance the folders agree on
    user_task: tuple | None  # the --tasks file, read before the model loads
    quiet: bool
    interp: dict | None = None  # an interpretation run's summary (metrics with `needs_interp`)
    lm: Any = None  # the model and held-out rows (set when a chosen metric `needs_model`)
    rows: Any = None
    dicts: list = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    l0: dict[str, float | None] = field(default_factory=dict)
    firing: dict = field(default_factory=dict)  # SAE name -> (firing frequency [d_sae], tokens read): core's pass

    @property
    def sink(self):
        return self.folders[0].provenance.sink

    def done(self, name: str, obj: dict, t0: float) -> None:
        """A metric finished: its JSON is written now (a later failure keeps it)."""
        self.wall[name] = time.time() - t0
        self.results[name] = obj
        write_json(self.out / f"{name}.json", obj)
        if not self.quiet:
            print(f"bench: {name} done in {self.wall[name]:.0f} s -> {self.out / (name + '.json')}")


@dataclass(frozen=True)
class Metric:
    """One bench metric, whole: how it is computed, reported and drawn (see the module docstring)."""

    name: str  # --metrics spelling, the JSON file's stem
    description: str
    compute: Callable[[BenchState], dict]
    tables: Callable[[dict], list[Table]]
    panel: Callable[[Any, dict, dict], None] | None = None
    default: bool = False  # run when --metrics is not given
    needs_model: bool = False  # reads the model pass (state.lm, state.rows, baselines in state.dicts)
    needs_interp: bool = False  # reads --interp: default when it is given, refused without it


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def by_l0(ax, names, values, l0s, kinds, ylabel):
    """Where several SAEs of different L0 are compared, L0 on the x axis (SAEs as points joined in L0
    order, baselines as horizontal lines); otherwise dictionaries are bars."""
    sae = [
        (l0s[n], v, n)
        for n, v, k in zip(names, values, kinds)
        if k == "sae" and l0s.get(n) is not None and v is not None
    ]
    if len({round(x[0], 3) for x in sae}) >= 2:
        sae.sort()
        ax.plot([x[0] for x in sae], [x[1] for x in sae], "o-", label="SAEs")
        for x, y, n in sae:
            ax.annotate(n, (x, y), fontsize=6)
        for n, v, k in zip(names, values, kinds):
            if k != "sae" and v is not None:
                ax.axhline(v, ls="--", lw=0.8, label=n, color=f"C{1 + names.index(n) % 8}")
        ax.set_xlabel("L0")
        ax.set_xscale("log")
        ax.legend(fontsize=6)
    else:
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [values[i] for i in xs], color=[f"C{i % 10}" for i in xs])
        ax.set_xticks(xs, [names[i] for i in xs], rotation=30, ha="right", fontsize=6)
    ax.set_ylabel(ylabel)
