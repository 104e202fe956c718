"""`saelab pareto`: read evaluated SAE folders (a sweep folder or any folders holding them) and
draw the two plots of Braun et al. 2024: L0 vs CE loss increase and alive latents vs CE loss
increase, one curve per training recipe (`curve_label`: the loss, "local+ft" for a local run with a
KL+MSE fine-tune at its end, "kl+mse from <arch>" for a fine-tune of an existing SAE; the
architecture when the folders hold several); write every point as CSV and a table of L0 / alive at matched
CE loss increase (linear interpolation along each curve, only inside every curve's range).

Sources are SAE folders or an earlier `pareto.json` (its points join the new ones as they are, so a
curve trained later can be drawn beside curves whose folders are gone).

Files: pareto.png (two panels), pareto.csv (one row per SAE), matched.csv (one row per target CE
increase), pareto.json (the same numbers plus where they came from).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..option_checks import check_types
from ..options import opt, out_option, overwrite_option
from ..storage import read_json, write_figure, write_json

COLORS = {"local": "#3b6ea8", "e2e": "#c0392b", "e2e+ds": "#27ae60", "local+ft": "#8e44ad", "kl+mse": "#d4a017"}
FIELDS = [
    "loss",
    "arch",
    "k",
    "sparsity_coeff",
    "l0",
    "alive",
    "d_sae",
    "ce_increase",
    "kl",
    "fvu",
    "later_fvu_mean",
    "ce_recovered_zero",
    "training_tokens",
    "folder",
]


def recipe(ours: dict) -> str:
    """How an SAE was trained, as a curve name: its loss, with a fine-tune at the end made visible."""
    loss = ours.get("loss", "local")
    if ours.get("finetune_fraction"):  # written by finetune.SwitchObjective.record
        return f"{loss}+ft"
    return loss


def _earlier_points(path: Path) -> list[dict]:
    """The points of an earlier `pareto.json`, with its model and hookpoint (their folders may be gone)."""
    d = read_json(path)
    if not {"model", "hookpoint", "points"} <= set(d):
        raise UserError(f"{path} is not a pareto.json written by `saelab pareto` (needs model, hookpoint, points)")
    return [{**p, "_model": d["model"], "_site": d["hookpoint"]} for p in d["points"]]


def collect_points(paths: list[str]) -> list[dict]:
    """One record per SAE folder (with cfg.json and metrics.json) under the given paths, plus the
    points of any earlier pareto.json given."""
    cfgs: list[Path] = []
    earlier: list[dict] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if p.is_file() and p.suffix == ".json":
            earlier += _earlier_points(p)
            continue
        cfgs += [p / "cfg.json"] if (p / "cfg.json").exists() else sorted(p.rglob("cfg.json"))
    if not cfgs and not earlier:
        raise UserError(f"no SAE folders (cfg.json) under {', '.join(paths)}")
    points, unevaluated = list(earlier), []
    for c in cfgs:
        folder = c.parent
        if not (folder / "metrics.json").exists():
            unevaluated.append(str(folder))
            continue
        cj, m = read_json(c), read_json(folder / "metrics.json")["metrics"]
        ours = cj.get("saelab", {})
        conf = ours.get("config", {})
        if "ce_increase" not in m:
            unevaluated.append(str(folder))
            continue
        alive = m.get("alive", int(round(cj["d_sae"] * (1 - m["dead_fraction"]))))
        points.append(
            {
                "loss": recipe(ours),
                "arch": conf.get("arch"),
                "k": conf.get("k"),
                "sparsity_coeff": conf.get("sparsity_coeff"),
                "l0": m["l0"],
                "alive": alive,
                "d_sae": cj["d_sae"],
                "ce_increase": m["ce_increase"],
                "kl": m["kl"],
                "fvu": m["fvu"],
                "later_fvu_mean": m.get("later_fvu_mean", float("nan")),
                "ce_recovered_zero": m.get("ce_recovered_zero", float("nan")),
                "training_tokens": ours.get("training_tokens"),
                "folder": str(folder),
                "_model": cj["metadata"]["model_name"],
                "_site": conf.get("out_hookpoint") or cj["metadata"]["hook_name"],
            }
        )
    if not points:
        raise UserError(
            f"none of the {len(cfgs)} SAE folders has metrics with CE increase; run `saelab eval` "
            f"(with --ce-tokens > 0) or `saelab sweep` first"
        )
    for key, what in (("_model", "models"), ("_site", "hookpoints")):
        seen = sorted({p[key] for p in points})
        if len(seen) > 1:
            raise UserError(
                f"these folders mix {what} ({', '.join(seen)}); a Pareto plot compares one model at one "
                f"hookpoint: pass the folders of one of them"
            )
    if unevaluated:
        print(f"saelab pareto: skipped {len(unevaluated)} SAE folder(s) without CE metrics: {unevaluated[:3]}")
    return points


def curves(points: list[dict]) -> dict[str, list[dict]]:
    """Curve name -> its points by CE increase: the recipe, prefixed by the architecture when several
    architectures are compared (an arch comparison: "gated local", or just "gated" if one recipe),
    suffixed by the dictionary size when one architecture comes in several."""
    archs, recipes = {p["arch"] for p in points}, {p["loss"] for p in points}
    sizes: dict[str, set] = {}
    for p in points:
        sizes.setdefault(p["arch"], set()).add(p["d_sae"])
    out: dict[str, list[dict]] = {}
    for p in points:
        name = p["loss"] if len(archs) == 1 else p["arch"] if len(recipes) == 1 else f"{p['arch']} {p['loss']}"
        if len(sizes[p["arch"]]) > 1:  # one curve per dictionary size: a line across sizes means nothing
            name += f" {p['d_sae']:,}"
        out.setdefault(name, []).append(p)
    order = {k: i for i, k in enumerate(COLORS)}
    return {
        k: sorted(v, key=lambda p: p["ce_increase"]) for k, v in sorted(out.items(), key=lambda kv: order.get(kv[0], 9))
    }


def matched(cs: dict[str, list[dict]], n: int = 3) -> list[dict]:
    """L0 and alive of each curve at CE increases inside every curve's range (interpolated)."""
    ranges = [(c[0]["ce_increase"], c[-1]["ce_increase"]) for c in cs.values() if len(c) >= 2]
    if len(ranges) < len(cs) or not ranges:
        return []
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo > hi:
        return []
    rows = []
    for t in np.linspace(lo, hi, n) if hi > lo else [lo]:
        row = {"ce_increase": float(t)}
        for loss, c in cs.items():
            x = np.array([p["ce_increase"] for p in c])
            row[f"{loss}_l0"] = float(np.interp(t, x, [p["l0"] for p in c]))
            row[f"{loss}_alive"] = float(np.interp(t, x, [p["alive"] for p in c]))
        rows.append(row)
    return rows


@dataclass
class ParetoConfig:
    """`saelab pareto`: where the points come from, where the plots go."""

    folders: list[str] = opt(
        help="sweep folders, SAE folders with metrics.json, or an earlier pareto.json", positional=True
    )
    out: str | None = out_option("output folder", shown="FIRST/pareto")
    title: str | None = opt(None, "plot title")
    overwrite: bool = overwrite_option("an existing pareto.png / pareto.csv")

    def validate(self) -> None:
        check_types(self)

    def out_dir(self) -> str:
        return self.out or str(Path(self.folders[0]) / "pareto")


def pareto(cfg: ParetoConfig) -> dict:
    """The curves of cfg.folders' points into cfg.out (default FIRST/pareto): pareto.csv, matched.csv,
    pareto.png and pareto.json (returned)."""
    cfg.validate()
    points = collect_points(cfg.folders)
    out_dir = Path(cfg.out_dir())
    if (out_dir / "pareto.json").exists() and not cfg.overwrite:
        raise UserError(f"{out_dir / 'pareto.json'} exists; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    cs = curves(points)
    table = matched(cs)
    _write_csv(out_dir / "pareto.csv", [{k: p[k] for k in FIELDS} for c in cs.values() for p in c], FIELDS)
    if table:
        _write_csv(out_dir / "matched.csv", table, list(table[0]))
    else:  # curves that do not overlap in CE increase: no table, and none left from an earlier run
        (out_dir / "matched.csv").unlink(missing_ok=True)
    title = cfg.title or f"{points[0]['_model']} @ {points[0]['_site']}"
    plot(cs, out_dir / "pareto.png", title)
    result = {
        "model": points[0]["_model"],
        "hookpoint": points[0]["_site"],
        "sources": [str(p) for p in cfg.folders],
        "points": [{k: p[k] for k in FIELDS} for c in cs.values() for p in c],
        "matched": table,
    }
    write_json(out_dir / "pareto.json", result)
    return result


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})
    tmp.replace(path)


def plot(cs: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for loss, c in cs.items():
        ce = [p["ce_increase"] for p in c]
        for ax, key in zip(axes, ("l0", "alive")):
            ax.plot(ce, [p[key] for p in c], "o-", color=COLORS.get(loss), label=loss)
            for p in c:
                lab = f"k={p['k']}" if p["k"] is not None else f"c={p['sparsity_coeff']:g}"
                ax.annotate(lab, (p["ce_increase"], p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set_ylabel("L0 (active latents per token)")
    axes[1].set_ylabel("alive latents (fired on held-out tokens)")
    for ax in axes:
        ax.set_xlabel("CE loss increase (nats/token, sinks kept clean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_figure(path, fig)
