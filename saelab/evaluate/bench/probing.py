"""Sparse probing (Gurnee et al. 2023; SAEBench, Karvonen et al. 2025).

Per task and dictionary: on the training split, rank latents by the absolute difference of their
class means (`top_mean_difference`), fit a logistic regression on the top k (k in KS) and report
held-out accuracy; the ceiling is a logistic regression on the dictionary's whole site (the raw
activations it reads). Multi-class tasks are scored one-vs-rest, as SAEBench does: per class a
binary task with as many negatives (drawn evenly from the other classes, seed) as positives, so
chance is 50% for every sub-task; the task's accuracy is the mean over classes.

Beside each result, the supervised baselines a sparse probe should be read against: the ceiling and
the difference-of-means direction (one per sub-task, i.e. per class; logreg.diff_of_means_accuracy),
both on the full site, and the k-sparse accuracy as a fraction of the ceiling. Tasks with
out-of-distribution families (tasks.py) are probed a second time, fit on one family and tested on the
other, as "<task> (ood)"; their means are reported apart (`ood`), never mixed into the in-distribution ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .bootstrap import noise_tables
from .dictionaries import Dictionary
from .encode import Encoded, encode_task
from .logreg import accuracy, diff_of_means_accuracy, fit_logreg, top_mean_difference
from .metric import BenchState, Metric, Table
from .probing_noise import probing_noise
from .task_files import file_task
from .tasks import FAMILIES, Task, builtin_tasks

KS = (1, 2, 5, 10, 20)
MIN_OOD = 10  # examples per class on each side of an out-of-distribution split, or the task has none (noise)


@dataclass
class ProbeTask:
    task: str
    level: str  # sequence | token
    classes: list[str]
    n_train: int
    n_test: int
    accuracy: dict[str, float]  # k -> held-out accuracy (mean over one-vs-rest sub-tasks when multi-class)
    ceiling: float  # logistic regression on the dictionary's full site
    top_latents: dict[str, list[int]]  # class -> the 5 latents of largest class-mean difference (train split)
    diff_means: float = 0.0  # difference-of-means direction on the full site (one per sub-task)
    split: str = "rows"  # rows: random rows (70/30); ood: fit on one family, tested on the other (tasks.py)


@dataclass
class ProbingResult:
    dictionary: str
    kind: str
    ks: list[int]
    tasks: list[ProbeTask]
    mean_accuracy: dict[str, float]  # k -> mean over tasks (split "rows")
    mean_ceiling: float
    mean_diff_means: float = 0.0
    ceiling_fraction: dict[str, float] | None = None  # k -> mean_accuracy / mean_ceiling
    ood: dict | None = None  # the same four means over the "(ood)" tasks; None when there are none


def subtasks(labels: np.ndarray, n_classes: int, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class name index, example indices, binary labels) per sub-task: the task itself when binary,
    else one balanced one-vs-rest task per class."""
    if n_classes == 2:
        return [("1", np.arange(len(labels)), labels.astype(int))]
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_classes):
        pos = np.flatnonzero(labels == c)
        neg = rng.permutation(np.flatnonzero(labels != c))[: len(pos)]
        idx = np.concatenate([pos, neg])
        out.append((str(c), idx, (labels[idx] == c).astype(int)))
    return out


def probe_codes(
    z: torch.Tensor, y: np.ndarray, train: np.ndarray, ks=KS, correct: dict | None = None
) -> tuple[dict[str, float], list[int]]:
    """Held-out accuracy of a probe on the top-k latents for each k, and the top 5 latents; `correct`,
    when given, receives k -> the probe's 0/1 correctness on each held-out example (the bootstrap's input)."""
    yt = torch.from_numpy(y)
    tr, te = torch.from_numpy(train), torch.from_numpy(~train)
    z_tr, z_te, y_tr, y_te = z[tr], z[te], yt[tr], yt[te]
    order = top_mean_difference(z_tr, y_tr, max(max(ks), 5))
    acc = {}
    for k in ks:
        cols = order[:k]
        probe = fit_logreg(z_tr[:, cols], y_tr)
        acc[str(k)] = accuracy(probe, z_te[:, cols], y_te)
        if correct is not None:
            correct[str(k)] = (probe.predict(z_te[:, cols].float()) == y_te).numpy()
    return acc, order[:5].tolist()


def ceiling(x: torch.Tensor, y: np.ndarray, train: np.ndarray) -> float:
    yt = torch.from_numpy(y)
    tr, te = torch.from_numpy(train), torch.from_numpy(~train)
    return accuracy(fit_logreg(x[tr], yt[tr], l2=1e-2), x[te], yt[te])


def diff_means(x: torch.Tensor, y: np.ndarray, train: np.ndarray) -> float:
    yt = torch.from_numpy(y)
    tr, te = torch.from_numpy(train), torch.from_numpy(~train)
    return diff_of_means_accuracy(x[tr], yt[tr], x[te], yt[te])


def ood_examples(task: Task, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(used, fit) over the kept examples for the task's out-of-distribution split: `used` marks the
    examples of either family, `fit` (over the used ones) those of the fit family. None when the task has
    no families or a class has fewer than MIN_OOD examples on a side."""
    split = task.ood_split()
    if split is None:
        return None
    fit, test = split[0][keep], split[1][keep]
    labels = task.labels[keep]
    for c in range(len(task.classes)):
        if min((fit & (labels == c)).sum(), (test & (labels == c)).sum()) < MIN_OOD:
            return None
    used = fit | test
    return used, fit[used]


def probe_task(
    task: Task,
    enc: Encoded,
    dicts: list[Dictionary],
    ks=KS,
    seed: int = 0,
    correct: dict | None = None,
    ood: bool = False,
) -> list[ProbeTask]:
    """One ProbeTask per dictionary (same order as `dicts`); `ood`: on the task's out-of-distribution
    split (ood_examples must not be None) instead of its random rows; `correct`, when given, receives
    dictionary name -> [per sub-task: k -> 0/1 correctness on its held-out examples] (probing_noise.py)."""
    labels, train = task.labels[enc.keep], task.train[enc.keep]
    used = np.ones(len(labels), bool)
    if ood:
        used, train = ood_examples(task, enc.keep)
        labels = labels[used]
    at = torch.from_numpy(np.flatnonzero(used))
    subs = subtasks(labels, len(task.classes), seed)
    ceilings: dict[str, tuple[float, float]] = {}
    out = []
    for d in dicts:
        z = enc.codes[d.name][at]
        accs, tops = [], {}
        for cls, idx, y in subs:
            c = {}
            a, top = probe_codes(z[torch.from_numpy(idx)], y, train[idx], ks, c)
            if correct is not None:
                correct.setdefault(d.name, []).append(c)
            accs.append(a)
            tops[task.classes[int(cls)]] = top
        if d.site not in ceilings:
            x = enc.site[d.site][at]
            ceilings[d.site] = (
                float(np.mean([ceiling(x[torch.from_numpy(idx)], y, train[idx]) for _, idx, y in subs])),
                float(np.mean([diff_means(x[torch.from_numpy(idx)], y, train[idx]) for _, idx, y in subs])),
            )
        n_tr = int(np.mean([train[idx].sum() for _, idx, _ in subs]))
        n_te = int(np.mean([(~train[idx]).sum() for _, idx, _ in subs]))
        out.append(
            ProbeTask(
                task.name + (" (ood)" if ood else ""),
                task.level,
                task.classes,
                n_tr,
                n_te,
                {k: float(np.mean([a[k] for a in accs])) for k in accs[0]},
                ceilings[d.site][0],
                tops,
                ceilings[d.site][1],
                "ood" if ood else "rows",
            )
        )
    return out


def _means(tasks: list[ProbeTask], ks) -> tuple[dict[str, float], float, float, dict[str, float]]:
    """Mean accuracy per k, mean ceiling, mean difference-of-means accuracy, accuracy / ceiling per k."""
    acc = {str(k): float(np.mean([t.accuracy[str(k)] for t in tasks])) for k in ks}
    ceil = float(np.mean([t.ceiling for t in tasks]))
    return acc, ceil, float(np.mean([t.diff_means for t in tasks])), {k: v / ceil for k, v in acc.items()}


def summarise(d: Dictionary, per_task: list[ProbeTask], ks=KS) -> ProbingResult:
    acc, ceil, dm, frac = _means([t for t in per_task if t.split == "rows"], ks)
    ood_tasks = [t for t in per_task if t.split == "ood"]
    ood = None
    if ood_tasks:
        o = _means(ood_tasks, ks)
        ood = {"mean_accuracy": o[0], "mean_ceiling": o[1], "mean_diff_means": o[2], "ceiling_fraction": o[3]}
    return ProbingResult(d.name, d.kind, list(ks), per_task, acc, ceil, dm, frac, ood)


def compute(b: BenchState) -> dict:
    """Every task (built-in, plus the --tasks file) encoded once, probed for every dictionary; the L0 of
    dictionaries that core did not measure (baselines) is read on the token-level tasks."""
    cfg = b.cfg
    tasks = builtin_tasks(b.lm.tokenizer, cfg.seed, cfg.task_scale)
    if b.user_task:
        tasks.append(file_task(b.lm.tokenizer, cfg.tasks, *b.user_task, seed=cfg.seed))
    per: dict[str, list] = {d.name: [] for d in b.dicts}
    correct: list[dict] = []  # per task: dictionary -> per sub-task correctness (the bootstrap's input)
    ood_correct: list[dict] = []  # the same for the out-of-distribution splits, bootstrapped apart
    described = []
    for task in tasks:
        enc = encode_task(b.lm.model, b.lm.tokenizer, task, b.dicts, b.site, b.sink, device=cfg.device)
        correct.append({})
        for d, r in zip(b.dicts, probe_task(task, enc, b.dicts, KS, cfg.seed, correct[-1])):
            per[d.name].append(r)
        described.append(
            {"task": task.name, "level": task.level, "classes": task.classes, "description": task.description}
        )
        if ood_examples(task, enc.keep) is not None:  # the same encoded rows, split by family
            ood_correct.append({})
            for d, r in zip(b.dicts, probe_task(task, enc, b.dicts, KS, cfg.seed, ood_correct[-1], ood=True)):
                per[d.name].append(r)
            ood_note = f"{task.description}; fit on {FAMILIES[0]}, tested on {FAMILIES[1]} (tasks.py)"
            described.append({**described[-1], "task": task.name + " (ood)", "description": ood_note})
        elif task.family is not None:
            b.notes.append(f"probing: {task.name} has too few examples per family for its out-of-distribution split")
        if task.level == "token":  # L0 of each dictionary on real tokens (dense bases: their width)
            for d in b.dicts:
                b.l0.setdefault(d.name, float((enc.codes[d.name] != 0).sum(1).float().mean()))
    return {
        "ks": list(KS),
        "seed": cfg.seed,
        "tasks": described,
        "dictionaries": [asdict(summarise(d, per[d.name], KS)) for d in b.dicts],
        "noise": probing_noise(correct, [d.name for d in b.dicts], KS, cfg.seed),
        "ood_noise": probing_noise(ood_correct, [d.name for d in b.dicts], KS, cfg.seed),
    }


def tables(probing: dict) -> list[Table]:
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
    out.append(
        (
            "Sparse probing against supervised baselines on the full site (k-sparse accuracy / logistic ceiling)",
            ["dictionary", "kind", "difference of means", "logistic (ceiling)"] + [f"k={k} / ceiling" for k in ks],
            [
                [r["dictionary"], r["kind"], r["mean_diff_means"], r["mean_ceiling"]]
                + [r["ceiling_fraction"][str(k)] for k in ks]
                for r in res
            ],
        )
    )
    ood = [r for r in res if r["ood"]]
    if ood:
        out.append(
            (
                f"Sparse probing out of distribution (fit on {FAMILIES[0]}, tested on {FAMILIES[1]})",
                ["dictionary", "kind"]
                + [f"k={k}" for k in ks]
                + ["difference of means", "logistic (ceiling)", f"k={ks[0]} / ceiling", f"k={ks[-1]} / ceiling"],
                [
                    [r["dictionary"], r["kind"]]
                    + [r["ood"]["mean_accuracy"][str(k)] for k in ks]
                    + [r["ood"]["mean_diff_means"], r["ood"]["mean_ceiling"]]
                    + [r["ood"]["ceiling_fraction"][str(ks[0])], r["ood"]["ceiling_fraction"][str(ks[-1])]]
                    for r in ood
                ],
            )
        )
    names = [t["task"] for t in res[0]["tasks"]] if res else []
    for k in (1, 5):
        if k in ks:
            rows = [[r["dictionary"]] + [t["accuracy"][str(k)] for t in r["tasks"]] for r in res]
            out.append((f"Sparse probing per task, k={k}", ["dictionary"] + names, rows))
    if probing.get("noise"):
        out += noise_tables("Sparse probing, mean accuracy", probing["noise"])
    if probing.get("ood_noise"):
        out += noise_tables("Sparse probing out of distribution, mean accuracy", probing["ood_noise"])
    return out


def panel(ax, probing: dict, l0s: dict) -> None:
    for i, d in enumerate(probing["dictionaries"]):
        ax.plot(
            probing["ks"],
            [d["mean_accuracy"][str(k)] for k in probing["ks"]],
            "o-",
            ms=3,
            label=d["dictionary"],
            color=f"C{i % 10}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("k latents")
    ax.set_ylabel("mean held-out accuracy")
    ax.set_title("sparse probing")
    ax.legend(fontsize=6)


METRIC = Metric(
    "probing",
    "sparse probing: held-out accuracy of probes on the top-k latents, per labelled task",
    compute,
    tables,
    panel,
    default=True,
    needs_model=True,
)
