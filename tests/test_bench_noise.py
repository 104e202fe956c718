"""The bench's noise (bootstrap.py): 90% intervals from resampling test examples cover a planted value
at about their nominal rate, a difference of the minimum detectable size is found at about its stated
power, paired comparisons call a zero difference "within noise" at about the nominal rate, and sparse
probing reports intervals whose point value is its mean accuracy, with a planted dictionary clearly
above a random one and a dictionary within noise of itself. Pure numpy / torch, no model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_bench import _absorption_case

from saelab.data import load_token_rows
from saelab.evaluate.bench import absorption as ab
from saelab.evaluate.bench import report
from saelab.evaluate.bench.bootstrap import (
    bootstrap_means,
    bootstrap_ratios,
    min_detectable_difference,
    noise_block,
    noise_tables,
    paired_difference,
    percentile_interval,
    series_noise,
)
from saelab.evaluate.bench.core import core_noise
from saelab.evaluate.bench.encode import Encoded
from saelab.evaluate.bench.logreg import fit_logreg
from saelab.evaluate.bench.probing import probe_task, summarise
from saelab.evaluate.bench.probing_noise import probing_noise
from saelab.evaluate.bench.tasks import Task, split_rows
from saelab.evaluate.metrics import EvalBudget, measure
from saelab.models import load_model
from saelab.sae import SaeConfig, build_sae

REPS = 200
NOMINAL = (0.83, 0.96)  # 90% +- ~3 binomial standard deviations over 200 repetitions


def _covers(strata, truth, weights=None, seed=0) -> bool:
    point, boot, _ = bootstrap_means(strata, weights, resamples=300, seed=seed)
    lo, hi = percentile_interval(boot)
    return bool(lo[0] <= truth <= hi[0])


def test_interval_covers_a_planted_accuracy_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    hits = [_covers([rng.random(300) < 0.7], 0.7, seed=r) for r in range(REPS)]
    assert NOMINAL[0] <= np.mean(hits) <= NOMINAL[1], np.mean(hits)


def test_stratified_interval_covers_a_planted_mean_of_means():
    """Two strata of different sizes and means (a task's sub-tasks): the statistic is the mean of their
    means (0.5 * (0.9 + 2.0)), not the pooled mean, and the interval covers it at its nominal rate."""
    rng = np.random.default_rng(1)
    hits = []
    for r in range(REPS):
        a, b = rng.random(80) < 0.9, rng.exponential(2.0, 400)
        hits.append(_covers([a, b], 1.45, seed=r))
    assert NOMINAL[0] <= np.mean(hits) <= NOMINAL[1], np.mean(hits)
    point, _, n = bootstrap_means([np.ones(10), np.zeros(30)])
    assert point[0] == 0.5 and n == 40  # the pooled mean would be 0.25


def test_a_wrong_interval_would_fail_the_coverage_check():
    """The check has teeth: an interval of half the width covers far less than 90%."""
    rng = np.random.default_rng(2)
    hits = []
    for r in range(REPS):
        point, boot, _ = bootstrap_means([rng.random(300) < 0.7], resamples=300, seed=r)
        lo, hi = percentile_interval(boot)
        mid, half = point[0], (hi[0] - lo[0]) / 4
        hits.append(mid - half <= 0.7 <= mid + half)
    assert np.mean(hits) < NOMINAL[0]


def test_zero_difference_is_within_noise_at_the_nominal_rate_and_a_planted_one_is_found():
    """Two dictionaries on the same examples, sharing each example's difficulty (paired): with equal
    accuracy the paired interval covers 0 about 90% of the time; 0.1 apart it never does."""
    rng = np.random.default_rng(3)
    same, found = [], []
    for r in range(REPS):
        hard = rng.random(400)  # per-example difficulty, shared by both
        a = hard < 0.7
        b0 = np.where(rng.random(400) < 0.5, a, rng.random(400) < 0.7)  # same accuracy, half the examples shared
        b1 = hard < 0.6
        for b, out in ((b0, same), (b1, found)):
            point, boot, _ = bootstrap_means([np.stack([a, b], 1)], resamples=300, seed=r)
            out.append(paired_difference(boot, point, 0, 1)["within_noise"])
    assert NOMINAL[0] <= np.mean(same) <= NOMINAL[1], np.mean(same)
    assert not any(found)


def test_a_difference_of_the_minimum_detectable_size_is_found_at_about_its_power():
    """Independent dictionaries on 300 examples each: a true difference equal to the stated minimum
    detectable difference is called (interval excludes 0) about 80% of the time, half of it far less."""
    rng = np.random.default_rng(4)
    n, p = 300, 0.7
    _, boot, _ = bootstrap_means([np.stack([rng.random(n) < p, rng.random(n) < p], 1)], resamples=300)
    mdd = min_detectable_difference(boot)
    assert abs(mdd - 2.486 * np.sqrt(2 * p * (1 - p) / n)) < 0.015  # (z_0.95 + z_0.8) sqrt(2) se
    called = {}
    for delta in (mdd, mdd / 2):
        hits = []
        for r in range(REPS):
            x = np.stack([rng.random(n) < p, rng.random(n) < p - delta], 1)
            point, boot, _ = bootstrap_means([x], resamples=300, seed=r)
            hits.append(not paired_difference(boot, point, 0, 1)["within_noise"])
        called[delta] = np.mean(hits)
    assert 0.68 <= called[mdd] <= 0.92, called
    assert called[mdd / 2] < 0.45, called


def _planted_task(n: int = 600, d: int = 32, seed: int = 0):
    """A 3-class sequence task whose class lives on coordinates 0-2; dictionaries: the identity
    (planted), the same one under another name, and a random basis."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, d))
    x[np.arange(n), y] += 2.0
    task = Task(
        "planted",
        "sequence",
        ["a", "b", "c"],
        "planted",
        np.zeros((n, 1), np.int64),
        np.ones(n, np.int64),
        y,
        np.arange(n),
        None,
        split_rows(n, seed),
    )
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    codes = {"planted": torch.tensor(x, dtype=torch.float32), "copy": torch.tensor(x, dtype=torch.float32)}
    codes["random"] = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32)  # carries no label
    enc = Encoded(codes, {"s": codes["planted"]}, np.ones(n, bool))
    dicts = [SimpleNamespace(name=k, site="s", kind="sae") for k in codes]
    return task, enc, dicts


def test_probing_reports_intervals_around_its_mean_accuracy_and_paired_verdicts():
    ks = (1, 5)
    correct, per = [], {}
    for seed in (0, 1):  # two tasks
        task, enc, dicts = _planted_task(seed=seed)
        correct.append({})
        for d, r in zip(dicts, probe_task(task, enc, dicts, ks, 0, correct[-1])):
            per.setdefault(d.name, []).append(r)
    noise = probing_noise(correct, [d.name for d in dicts], ks, resamples=300)
    for d in dicts:
        mean = summarise(d, per[d.name], ks).mean_accuracy
        for k in ks:
            iv = noise["intervals"][f"k={k}"][d.name]
            assert abs(iv["value"] - mean[str(k)]) < 1e-6  # the point value is the reported accuracy (float32)
            assert iv["ci_low"] <= iv["value"] <= iv["ci_high"]
            assert iv["n"] == sum(len(s[str(k)]) for t in correct for s in t[d.name])  # held-out examples
    assert noise["intervals"]["k=1"]["planted"]["ci_low"] > 0.7
    assert abs(noise["intervals"]["k=1"]["random"]["value"] - 0.5) < 0.08
    pairs = {(p["a"], p["b"]): p for p in noise["comparisons"]["k=1"]}
    assert pairs[("planted", "copy")] == {
        "a": "planted",
        "b": "copy",
        "difference": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "within_noise": True,
    }
    assert not pairs[("planted", "random")]["within_noise"] and pairs[("planted", "random")]["difference"] > 0.2
    assert set(noise["comparisons"]) == {"k=1", "k=5"}
    assert 0 < noise["min_detectable_difference"]["k=1"] < 0.2

    iv0 = noise["intervals"]["k=1"]["planted"]
    md = report.markdown(
        {"site": "s", "model": "m", "corpus": "c", "wall_s": {}, "dictionaries": [], "notes": []},
        {"probing": {"ks": list(ks), "dictionaries": [], "noise": noise}},
        None,
    )
    assert f"## Sparse probing, mean accuracy: 90% bootstrap intervals over the {iv0['n']} held-out examples" in md
    iv = noise["intervals"]["k=1"]["planted"]
    assert f"| planted | {iv['value']:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}] |" in md
    assert "| planted | copy | 0.000 | [0.000, 0.000] | within noise |" in md
    assert "| planted | random |" in md and "| a higher |" in md


def test_noise_block_and_tables_for_one_quantity():
    point, boot, n = bootstrap_means([np.stack([np.arange(50.0), np.arange(50.0) + 10], 1)], resamples=200)
    block = noise_block(point, boot, n, [("fvu", "a"), ("fvu", "b")])
    assert block["intervals"]["fvu"]["a"]["value"] == 24.5 and block["intervals"]["fvu"]["b"]["n"] == 50
    (p,) = block["comparisons"]["fvu"]
    assert p["difference"] == -10.0 and not p["within_noise"]
    assert abs(p["ci_low"] + 10) < 1e-9 and abs(p["ci_high"] + 10) < 1e-9  # b - a is 10 on every example
    titles = [t for t, _, _ in noise_tables("Core", block)]
    assert len(titles) == 2 and titles[1].startswith("Core, fvu: paired differences")


def test_absorption_intervals_are_around_its_means_and_tell_absorbing_from_not():
    """The same words through an absorbing and a non-absorbing dictionary: each interval holds its mean
    absorption rate (a mean over letters, not over words), the absorbing one is clearly higher, and the
    report shows the comparison."""
    values, res = {}, {}
    for absorbing in (True, False):
        x, y, z, dirs, _ = _absorption_case(absorbing)
        train = torch.from_numpy(split_rows(len(y), 0))
        probe = fit_logreg(x[train], y[train], n_classes=3)
        name = "absorbing" if absorbing else "clean"
        values[name] = []
        args = (probe, ["a", "b", "c"], x[~train], y[~train], z[train], y[train], z[~train], dirs, x[train].mean(0))
        res[name] = ab.dictionary_absorption(name, "sae", *args, 0, values[name])
    noise = ab.absorption_noise(values)
    for name, r in res.items():
        iv = noise["intervals"]["absorption rate"][name]
        assert iv["value"] == pytest.approx(r.mean_absorption_rate, abs=1e-6)
        assert iv["n"] == sum(le.n_test for le in r.letters)
        assert iv["ci_low"] <= iv["value"] <= iv["ci_high"]
        fr = noise["intervals"]["absorption fraction"][name]
        assert fr["value"] == pytest.approx(r.mean_absorption_fraction, abs=1e-6)
    assert noise["intervals"]["absorption rate"]["clean"]["ci_high"] == 0.0
    assert noise["intervals"]["absorption rate"]["absorbing"]["ci_low"] > 0.05  # ~0.1: a third of one letter's words
    (p,) = noise["comparisons"]["absorption rate"]
    assert (p["a"], p["b"]) == ("absorbing", "clean") and not p["within_noise"] and p["difference"] > 0.05
    tables = ab.tables(
        {
            "probe_accuracy": 1.0,
            "chance": 0.3,
            "n_words": 1,
            "letters": ["a"],
            "weak": False,
            "dictionaries": [],
            "noise": noise,
        }
    )
    assert [t[0].split(":")[0] for t in tables[1:]] == ["Absorption", "Absorption, absorption rate"]
    assert ab.absorption_noise({}) is None


def test_strata_too_small_to_vary_are_marked_unreliable_not_exact():
    """Four strata of one example each: every resample equals the point value, so the interval has zero
    width; the block says so and the report refuses a verdict instead of calling the difference real."""
    values = {("rate", "a"): [np.ones(1), np.zeros(1)] * 2, ("rate", "b"): [np.zeros(1)] * 4}
    noise = series_noise(values)
    assert noise["intervals"]["rate"]["a"]["ci_low"] == noise["intervals"]["rate"]["a"]["ci_high"] == 0.5
    assert not noise["reliable"] and noise["smallest_stratum"] == 1
    (title, _, rows), (_, _, pairs) = noise_tables("Absorption", noise)
    assert "UNRELIABLE: a stratum has only 1 examples" in title and pairs[0][-1] == "too few examples"
    big = series_noise({("rate", "a"): [np.ones(6)], ("rate", "b"): [np.zeros(6)]})
    assert big["reliable"] and noise_tables("x", big)[1][2][0][-1] == "a higher"


def test_ratio_interval_covers_a_planted_per_token_mean_resampled_by_row():
    """Rows of varying length whose tokens share a row effect (as tokens of one text do): the ratio
    sum(err) / sum(tokens) resampled by row covers the planted per-token mean at its nominal rate."""
    rng = np.random.default_rng(5)
    hits = []
    for r in range(REPS):
        n_tok = rng.integers(5, 60, 120)
        row_mean = 0.3 + rng.normal(0, 0.1, 120)  # the row effect: tokens of a row are correlated
        err = np.array([rng.normal(m, 0.2, t).sum() for m, t in zip(row_mean, n_tok)])
        point, boot, n = bootstrap_ratios(err, n_tok, resamples=300, seed=r)
        lo, hi = percentile_interval(boot)
        hits.append(lo[0] <= 0.3 <= hi[0])
    assert NOMINAL[0] <= np.mean(hits) <= NOMINAL[1], np.mean(hits)
    assert n == 120


def test_core_noise_point_values_are_the_reported_fvu_and_cosine(tiny_model_dir, text_corpus):
    """The per-row sums that `measure` hands out add up to the FVU and cosine it reports, for two SAEs
    read on the same rows (a k=64 and a k=8 one), and they cover every evaluated token."""
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    saes = []
    for seed in (0, 1):
        sae = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint="model.layers.1", k=8 if seed else 64))
        sae.reset_parameters(torch.Generator().manual_seed(seed))
        saes.append((sae.eval(), {}))
    per_row: list = []
    res, _ = measure(lm.model, lm.tokenizer, saes, rows, EvalBudget(tokens=1024, ce_tokens=0), "cpu", per_row)
    noise = core_noise(per_row, ["wide", "narrow"], resamples=300)
    for name, r in zip(("wide", "narrow"), res):
        assert noise["intervals"]["fvu"][name]["value"] == pytest.approx(r.fvu, rel=1e-4)
        assert noise["intervals"]["cosine"][name]["value"] == pytest.approx(r.cosine, rel=1e-4)
        assert noise["intervals"]["fvu"][name]["n"] == len(per_row[0]["n"]) and sum(per_row[0]["n"]) == r.eval_tokens
    assert noise["reliable"] and set(noise["comparisons"]) == {"fvu"} and noise["unit"] == "held-out rows"
