"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench).

Words: vocabulary tokens that are a space plus 3 or more ASCII letters (`Ġword` / `▁word`), at most
PER_LETTER per first letter, letters with at least MIN_WORDS words, read at the word's position in
the 2-token row [BOS, word]; split 70/30 by word (seed).

1. Probe: a multinomial logistic regression for the first letter on the site activations; its held-out
   accuracy says whether the model encodes first letters at this site at all (`weak` when < 0.5).
2. Main latents of letter L (k-sparse probing): rank latents by class-mean difference (L vs other
   letters, training words), add them one at a time while a balanced L-vs-rest probe's F1 on the
   training words improves by more than F1_GAIN; their number is the letter's split-feature count.
3. On held-out words of letter L that the probe classifies as L: with p = the probe's unit direction
   for L and proj_j = code_j * (direction_j . p),
   - absorption fraction: the share of the positive projection carried by latents outside the main
     ones (only latents with cos(direction_j, p) >= MIN_COS count, so random directions, which have
     cos ~ 1/sqrt(d), do not);
   - absorbed: every main latent is silent (code 0) and one other latent with cos >= MIN_COS carries at
     least CARRY of the word's own projection (x - mean) . p; the absorption rate is the fraction absorbed.
Dense bases (neurons, residual, PCA) have no silent latents: the metric is marked not applicable.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ...errors import UserError
from .bootstrap import noise_tables, series_noise
from .encode import encode_task
from .logreg import Probe, accuracy, fit_logreg
from .metric import BenchState, Metric, Table, by_l0, fmt
from .tasks import Task, split_rows

PER_LETTER = 120
MIN_WORDS = 40
MAX_SPLIT = 5
F1_GAIN = 0.03
MIN_COS = 0.1
CARRY = 0.4


@dataclass
class LetterAbsorption:
    letter: str
    n_test: int  # test words of the letter that the probe classifies correctly
    split_features: int  # main latents chosen by k-sparse probing (> 1: the feature is split)
    main_latents: list[int]
    absorption_rate: float  # fraction of those words: main latents silent, another latent carries the direction
    absorption_fraction: float  # mean share of the probe-direction projection carried by non-main latents


@dataclass
class AbsorptionResult:
    dictionary: str
    kind: str
    applicable: bool  # False for dense bases (neurons, residual, PCA): no latent is ever silent
    mean_absorption_rate: float | None
    mean_absorption_fraction: float | None
    mean_split_features: float | None
    letters: list[LetterAbsorption] = field(default_factory=list)


@dataclass
class AbsorptionReport:
    probe_accuracy: float  # first-letter probe on the site, held-out words
    chance: float  # accuracy of always predicting the most frequent letter
    n_words: int
    letters: list[str]
    weak: bool  # the probe is too weak for the metric to mean much (accuracy < 0.5)
    dictionaries: list[AbsorptionResult]
    noise: dict | None = None  # bootstrap over the held-out words (bootstrap.py; None: no sparse dictionary)


def vocabulary_words(tokenizer, seed: int = 0, per_letter: int = PER_LETTER) -> tuple[list[int], list[int], list[str]]:
    """(token ids, letter index, letters) of the word tokens used, a fixed sample."""
    by_letter: dict[str, list[int]] = {}
    for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        word = tok[1:] if tok[:1] in ("Ġ", "▁") else None
        if word and len(word) >= 3 and word.isascii() and word.isalpha():
            by_letter.setdefault(word[0].lower(), []).append(i)
    rng = np.random.default_rng(seed)
    letters = [c for c in string.ascii_lowercase if len(by_letter.get(c, [])) >= MIN_WORDS]
    ids, labels = [], []
    for li, c in enumerate(letters):
        pool = by_letter[c]
        for j in rng.permutation(len(pool))[:per_letter]:
            ids.append(pool[j])
            labels.append(li)
    return ids, labels, letters


def _f1(pred: torch.Tensor, y: torch.Tensor) -> float:
    tp = float(((pred == 1) & (y == 1)).sum())
    return 2 * tp / max(float((pred == 1).sum() + (y == 1).sum()), 1.0)


def main_latents(z: torch.Tensor, is_letter: torch.Tensor, seed: int = 0) -> list[int]:
    """k-sparse probing on training words: latents added while F1 improves by more than F1_GAIN."""
    pos = torch.nonzero(is_letter).flatten()
    neg = torch.nonzero(~is_letter).flatten()
    neg = neg[torch.randperm(len(neg), generator=torch.Generator().manual_seed(seed))[: len(pos)]]
    idx = torch.cat([pos, neg])
    zz, yy = z[idx], is_letter[idx].long()
    diff = zz[yy == 1].mean(0) - zz[yy == 0].mean(0)  # signed: latents that fire MORE on the letter
    order = diff.topk(MAX_SPLIT).indices
    best, chosen = -1.0, []
    for k in range(1, MAX_SPLIT + 1):
        cols = order[:k]
        f1 = _f1(fit_logreg(zz[:, cols], yy).predict(zz[:, cols]), yy)
        if k > 1 and f1 - best <= F1_GAIN:
            break
        best, chosen = f1, order[:k].tolist()
    return chosen


def letter_absorption(
    letter: str,
    main: list[int],
    x: torch.Tensor,
    z: torch.Tensor,
    p: torch.Tensor,
    directions: torch.Tensor,
    mean: torch.Tensor,
    values: dict | None = None,
) -> LetterAbsorption:
    """x, z: site activations and codes of held-out words of this letter that the probe gets right;
    `values`, when given, receives each word's absorbed (0/1) and fraction (the bootstrap's input)."""
    cos = directions @ p  # [d_lat]
    aligned = cos >= MIN_COS
    proj = (z * cos).clamp_min(0) * aligned  # [n, d_lat] positive projections of aligned latents
    is_main = torch.zeros(z.shape[1], dtype=torch.bool)
    is_main[main] = True
    main_p, other_p = proj[:, is_main].sum(1), proj[:, ~is_main].sum(1)
    total = main_p + other_p
    frac = torch.where(total > 0, other_p / total.clamp_min(1e-12), torch.zeros_like(total))
    own = ((x - mean) @ p).clamp_min(1e-12)
    silent = (z[:, is_main] <= 0).all(1)
    carried = proj[:, ~is_main].max(1).values >= CARRY * own if (~is_main).any() else torch.zeros_like(silent)
    absorbed = silent & carried
    n = len(x)
    if values is not None:
        values.update({"absorption rate": absorbed.float().numpy(), "absorption fraction": frac.float().numpy()})
    return LetterAbsorption(
        letter, n, len(main), main, float(absorbed.float().mean()) if n else 0.0, float(frac.mean()) if n else 0.0
    )


def first_letter_probe(x_tr, y_tr, x_te, y_te, n_letters: int) -> tuple[Probe, float]:
    probe = fit_logreg(x_tr, y_tr, n_classes=n_letters, l2=1e-3, iters=60)
    return probe, accuracy(probe, x_te, y_te)


def dictionary_absorption(
    name: str,
    kind: str,
    probe: Probe,
    letters: list[str],
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    z_tr: torch.Tensor,
    y_tr: torch.Tensor,
    z_te: torch.Tensor,
    directions: torch.Tensor,
    mean: torch.Tensor,
    seed: int = 0,
    values: list | None = None,
) -> AbsorptionResult:
    """Absorption of one sparse dictionary (codes z, unit decoder directions [d_lat, d]); `values`, when
    given, receives per letter its words' values (`letter_absorption`)."""
    dirs = probe.raw_directions()
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pred = probe.predict(x_te)
    per = []
    for li, c in enumerate(letters):
        main = main_latents(z_tr, y_tr == li, seed)
        right = (y_te == li) & (pred == li)
        v: dict = {}
        per.append(letter_absorption(c, main, x_te[right], z_te[right], dirs[li], directions, mean, v))
        if values is not None:
            values.append(v)
    per_ok = [r for r in per if r.n_test]
    mean_of = lambda f: float(np.mean([f(r) for r in per_ok])) if per_ok else None  # noqa: E731
    return AbsorptionResult(
        name,
        kind,
        True,
        mean_of(lambda r: r.absorption_rate),
        mean_of(lambda r: r.absorption_fraction),
        mean_of(lambda r: r.split_features),
        per,
    )


def _words_task(tokenizer, seed: int, scale: float) -> tuple[Task, list[str]]:
    ids, labels, letters = vocabulary_words(tokenizer, seed, max(10, int(PER_LETTER * scale)))
    if len(letters) < 2:
        raise UserError("absorption: the tokenizer has too few word tokens (space + 3 letters) per first letter")
    n = len(ids)
    rows = np.stack(
        [np.full(n, tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[0]), np.asarray(ids)], 1
    ).astype(np.int64)
    return Task(
        "first_letter",
        "token",
        letters,
        "first letter of a word token",
        rows,
        np.full(n, 2),
        np.asarray(labels),
        np.arange(n),
        np.ones(n, dtype=np.int64),
        split_rows(n, seed),
    ), letters


def run_absorption(lm, dicts, site: str, sink, cfg) -> AbsorptionReport:
    """The first-letter probe at `site`, then each sparse dictionary's absorption against it."""
    seed, device = cfg.seed, cfg.device
    task, letters = _words_task(lm.tokenizer, seed, cfg.task_scale)
    sparse = [d for d in dicts if d.sparse and d.directions is not None]
    enc = encode_task(
        lm.model, lm.tokenizer, task, sparse, site, sink, batch_rows=256, device=device, desc="bench: absorption"
    )
    y = torch.from_numpy(task.labels[enc.keep])
    tr = torch.from_numpy(task.train[enc.keep])
    x = enc.site[site]
    probe, acc = first_letter_probe(x[tr], y[tr], x[~tr], y[~tr], len(letters))
    chance = float(np.bincount(y[~tr].numpy()).max() / max(int((~tr).sum()), 1))
    results, values = [], {}
    for d in dicts:
        if d in sparse:
            values[d.name] = []
            z = enc.codes[d.name]
            results.append(
                dictionary_absorption(
                    d.name,
                    d.kind,
                    probe,
                    letters,
                    x[~tr],
                    y[~tr],
                    z[tr],
                    y[tr],
                    z[~tr],
                    d.directions,
                    x[tr].mean(0),
                    seed,
                    values[d.name],
                )
            )
        else:
            results.append(AbsorptionResult(d.name, d.kind, False, None, None, None))
    return AbsorptionReport(acc, chance, int(len(y)), letters, acc < 0.5, results, absorption_noise(values, seed))


def absorption_noise(values: dict[str, list[dict]], seed: int = 0) -> dict | None:
    """Intervals of the mean absorption rate and fraction: each letter's held-out words are a stratum
    (every letter weighs 1, as in the means); every sparse dictionary reads the same words (paired)."""
    if not values:
        return None
    first = next(iter(values.values()))
    letters = [i for i, v in enumerate(first) if len(v["absorption rate"])]  # as the means: letters with words
    series = {
        (q, d): [per[i][q] for i in letters]
        for q in ("absorption rate", "absorption fraction")
        for d, per in values.items()
    }
    return series_noise(series, seed=seed, unit="held-out words the probe gets right")


def compute(b: BenchState) -> dict:
    rep = run_absorption(b.lm, b.dicts, b.site, b.sink, b.cfg)
    if rep.weak:
        b.notes.append(
            f"absorption: the first-letter probe reaches only {rep.probe_accuracy:.2f} held-out "
            f"accuracy at {b.site}; the absorption numbers mean little there"
        )
    return asdict(rep)


def tables(ab: dict) -> list[Table]:
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
    out = [(head, ["dictionary", "applicable", "absorption rate", "absorption fraction", "split features"], rows)]
    return out + (noise_tables("Absorption", ab["noise"]) if ab.get("noise") else [])


def panel(ax, ab: dict, l0s: dict) -> None:
    ds = [d for d in ab["dictionaries"] if d["applicable"]]
    by_l0(
        ax,
        [d["dictionary"] for d in ds],
        [d["mean_absorption_rate"] for d in ds],
        l0s,
        [d["kind"] for d in ds],
        "absorption rate",
    )
    ax.set_title(f"absorption (probe acc {ab['probe_accuracy']:.2f})")


METRIC = Metric(
    "absorption",
    "feature absorption on the first-letter task: how often a latent takes its parent feature's place",
    compute,
    tables,
    panel,
    default=True,
    needs_model=True,
)
