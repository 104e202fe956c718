"""Supervised baselines beside sparse probing (issue 30, item 3): the difference-of-means direction
separates planted data (and is at chance on random labels), the out-of-distribution split of the
built-in tasks never shares a row, a file or a token row with its fit side, and the ood probes are
reported apart from the in-distribution means, with the k-sparse accuracy as a fraction of the ceiling."""

import numpy as np
import pytest
import torch

from saelab.evaluate.bench.encode import Encoded
from saelab.evaluate.bench.logreg import diff_of_means_accuracy
from saelab.evaluate.bench.probing import KS, ood_examples, probe_task, summarise, tables
from saelab.evaluate.bench.tasks import FAMILIES, Task, builtin_tasks, split_rows


def _planted(n=800, d=64, shift=3.0, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    y = (torch.rand(n, generator=g) < 0.5).long()
    x = torch.randn(n, d, generator=g) * 0.5 + (shift * y[:, None] + offset) * u
    return x, y


def test_difference_of_means_separates_planted_data_and_is_at_chance_on_random_labels():
    x, y = _planted(offset=40.0)  # both classes far from the origin: the cut must be fitted, not 0
    tr = torch.from_numpy(split_rows(len(y), 0))
    assert diff_of_means_accuracy(x[tr], y[tr], x[~tr], y[~tr]) > 0.99
    xw, yw = _planted(shift=0.4)  # overlapping classes: below 1, above chance
    acc = diff_of_means_accuracy(xw[tr], yw[tr], xw[~tr], yw[~tr])
    assert 0.6 < acc < 0.8, acc
    yr = torch.randint(0, 2, (len(y),), generator=torch.Generator().manual_seed(1))
    assert 0.4 < diff_of_means_accuracy(x[tr], yr[tr], x[~tr], yr[~tr]) < 0.6


def _family_task(n_rows=240, seed=0):
    """A sequence task of 240 rows: rows 0-159 family 0, 160-239 family 1. The label lives on direction
    e0 in both families; family 1 adds a large shift along e1 (a distribution shift the probe never saw)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_rows)
    family = np.where(np.arange(n_rows) < 160, 0, 1)
    x = rng.normal(0, 1, (n_rows, 16))
    x[:, 0] += 5 * labels
    x[:, 1] += 4 * family
    task = Task(
        "planted",
        "sequence",
        ["a", "b"],
        "planted",
        np.zeros((n_rows, 4), np.int64),
        np.full(n_rows, 4),
        labels,
        np.arange(n_rows),
        None,
        split_rows(n_rows, seed),
        family,
        np.array([f"f{r}.py" for r in range(n_rows)]),
    )
    x = torch.tensor(x, dtype=torch.float32)
    enc = Encoded({"id": x}, {"site": x}, np.ones(n_rows, bool))
    return task, enc


def test_ood_probing_fits_one_family_tests_the_other_and_is_reported_apart():
    task, enc = _family_task()
    d = type("D", (), {"name": "id", "kind": "sae", "site": "site"})()
    used, fit = ood_examples(task, enc.keep)
    assert used.all() and fit.sum() == 160  # the fit side is exactly family 0
    rows = probe_task(task, enc, [d])[0]
    ood = probe_task(task, enc, [d], ood=True)[0]
    assert (ood.task, ood.split, rows.split) == ("planted (ood)", "ood", "rows")
    assert ood.n_train == 160 and ood.n_test == 80
    assert rows.diff_means > 0.9 and ood.diff_means > 0.9 and rows.ceiling > 0.9
    assert rows.accuracy["1"] > 0.9  # latent 0 carries the label
    res = summarise(d, [rows, ood], KS)
    assert res.mean_accuracy == rows.accuracy and res.mean_diff_means == rows.diff_means  # ood not mixed in
    assert res.ood["mean_accuracy"] == ood.accuracy and res.ood["mean_ceiling"] == ood.ceiling
    assert res.ceiling_fraction["1"] == pytest.approx(rows.accuracy["1"] / rows.ceiling)
    from dataclasses import asdict

    titled = {t[0]: t for t in tables({"ks": list(KS), "dictionaries": [asdict(res)]})}
    base = titled[next(t for t in titled if t.startswith("Sparse probing against supervised baselines"))]
    assert base[2][0][2:5] == [rows.diff_means, rows.ceiling, res.ceiling_fraction["1"]]
    assert any(t.startswith("Sparse probing out of distribution") for t in titled)
    # too few examples of a class on a side: no ood split
    task.labels[160:] = 0
    assert ood_examples(task, enc.keep) is None


def test_builtin_ood_split_never_shares_rows_files_or_tokens_with_its_fit_side():
    from transformers import AutoTokenizer

    from saelab.models import _embedded_folder

    tok = AutoTokenizer.from_pretrained(_embedded_folder())
    tasks = {t.name: t for t in builtin_tasks(tok, 0, 0.25)}
    assert tasks["stdlib_package"].ood_split() is None  # its label is the package: no family split
    for name in ("code_vs_prose", "token_type", "inside_string"):
        t = tasks[name]
        fit, test = t.ood_split()
        assert fit.any() and test.any() and not (fit & test).any()
        fit_rows, test_rows = set(t.rows[fit]), set(t.rows[test])
        assert not fit_rows & test_rows
        assert not {t.files[r] for r in fit_rows} & {t.files[r] for r in test_rows}
        assert not {t.ids[r].tobytes() for r in fit_rows} & {t.ids[r].tobytes() for r in test_rows}
        assert all("/" in t.files[r] for r in fit_rows), FAMILIES[0]  # inside a package folder
        assert all("/" not in t.files[r] for r in test_rows), FAMILIES[1]  # a top-level module
        for c in range(len(t.classes)):  # every class on both sides
            assert (t.labels[fit] == c).any() and (t.labels[test] == c).any(), (name, c)


def test_a_test_family_row_equal_to_a_fit_family_row_is_on_neither_side():
    from saelab.evaluate.bench.tasks import _families

    ids = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]])
    fam = _families(ids, np.array([0, 0, 1, 1, 0]))
    assert fam.tolist() == [0, 0, -1, 1, 0]  # row 2 repeats fit row 0; row 4 is itself a fit row
