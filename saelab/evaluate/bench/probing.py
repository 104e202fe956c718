"""Sparse probing (Gurnee et al. 2023; SAEBench, Karvonen et al. 2025).

Per task and dictionary: on the training split, rank latents by the absolute difference of their
class means (`top_mean_difference`), fit a logistic regression on the top k (k in KS) and report
held-out accuracy; the ceiling is a logistic regression on the dictionary's whole site (the raw
activations it reads). Multi-class tasks are scored one-vs-rest, as SAEBench does: per class a
binary task with as many negatives (drawn evenly from the other classes, seed) as positives, so
chance is 50% for every sub-task; the task's accuracy is the mean over classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .bootstrap import noise_tables
from .dictionaries import Dictionary
from .encode import Encoded, encode_task
from .logreg import accuracy, fit_logreg, top_mean_difference
from .metric import BenchState, Metric, Table
from .probing_noise import probing_noise
from .task_files import file_task
from .tasks import Task, builtin_tasks

KS = (1, 2, 5, 10, 20)


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


@dataclass
class ProbingResult:
    dictionary: str
    kind: str
    ks: list[int]
    tasks: list[ProbeTask]
    mean_accuracy: dict[str, float]  # k -> mean over tasks
    mean_ceiling: float


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


def probe_task(
    task: Task, enc: Encoded, dicts: list[Dictionary], ks=KS, seed: int = 0, correct: dict | None = None
) -> list[ProbeTask]:
    """One ProbeTask per dictionary (same order as `dicts`); `correct`, when given, receives dictionary
    name -> [per sub-task: k -> 0/1 correctness on its held-out examples] (probing_noise.py)."""
    labels, train = task.labels[enc.keep], task.train[enc.keep]
    subs = subtasks(labels, len(task.classes), seed)
    ceilings: dict[str, float] = {}
    out = []
    for d in dicts:
        z = enc.codes[d.name]
        accs, tops = [], {}
        for cls, idx, y in subs:
            c = {}
            a, top = probe_codes(z[torch.from_numpy(idx)], y, train[idx], ks, c)
            if correct is not None:
                correct.setdefault(d.name, []).append(c)
            accs.append(a)
            tops[task.classes[int(cls)]] = top
        if d.site not in ceilings:
            ceilings[d.site] = float(
                np.mean([ceiling(enc.site[d.site][torch.from_numpy(idx)], y, train[idx]) for _, idx, y in subs])
            )
        n_tr = int(np.mean([train[idx].sum() for _, idx, _ in subs]))
        n_te = int(np.mean([(~train[idx]).sum() for _, idx, _ in subs]))
        out.append(
            ProbeTask(
                task.name,
                task.level,
                task.classes,
                n_tr,
                n_te,
                {k: float(np.mean([a[k] for a in accs])) for k in accs[0]},
                ceilings[d.site],
                tops,
            )
        )
    return out


def summarise(d: Dictionary, per_task: list[ProbeTask], ks=KS) -> ProbingResult:
    mean = {str(k): float(np.mean([t.accuracy[str(k)] for t in per_task])) for k in ks}
    return ProbingResult(d.name, d.kind, list(ks), per_task, mean, float(np.mean([t.ceiling for t in per_task])))


def compute(b: BenchState) -> dict:
    """Every task (built-in, plus the --tasks file) encoded once, probed for every dictionary; the L0 of
    dictionaries that core did not measure (baselines) is read on the token-level tasks."""
    cfg = b.cfg
    tasks = builtin_tasks(b.lm.tokenizer, cfg.seed, cfg.task_scale)
    if b.user_task:
        tasks.append(file_task(b.lm.tokenizer, cfg.tasks, *b.user_task, seed=cfg.seed))
    per: dict[str, list] = {d.name: [] for d in b.dicts}
    correct: list[dict] = []  # per task: dictionary -> per sub-task correctness (the bootstrap's input)
    for task in tasks:
        enc = encode_task(b.lm.model, b.lm.tokenizer, task, b.dicts, b.site, b.sink, device=cfg.device)
        correct.append({})
        for d, r in zip(b.dicts, probe_task(task, enc, b.dicts, KS, cfg.seed, correct[-1])):
            per[d.name].append(r)
        if task.level == "token":  # L0 of each dictionary on real tokens (dense bases: their width)
            for d in b.dicts:
                b.l0.setdefault(d.name, float((enc.codes[d.name] != 0).sum(1).float().mean()))
    return {
        "ks": list(KS),
        "seed": cfg.seed,
        "tasks": [
            {"task": t.name, "level": t.level, "classes": t.classes, "description": t.description} for t in tasks
        ],
        "dictionaries": [asdict(summarise(d, per[d.name], KS)) for d in b.dicts],
        "noise": probing_noise(correct, [d.name for d in b.dicts], KS, cfg.seed),
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
    names = [t["task"] for t in res[0]["tasks"]] if res else []
    for k in (1, 5):
        if k in ks:
            rows = [[r["dictionary"]] + [t["accuracy"][str(k)] for t in r["tasks"]] for r in res]
            out.append((f"Sparse probing per task, k={k}", ["dictionary"] + names, rows))
    if probing.get("noise"):
        out += noise_tables("Sparse probing, mean accuracy", probing["noise"])
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
