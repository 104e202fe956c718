"""Issue 30 item 1, the rest: CE / KL bootstrap intervals in core (bench/core.py `ce_noise`), `saelab train
--seeds N` (train/seeds.py) and seed groups in the bench (seed_identity.py, seed_groups.py, seed_stats.py)."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import train_cfg

from saelab.api.stages import bench, train
from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.evaluate.bench import seed_groups
from saelab.evaluate.bench.config import BenchConfig
from saelab.evaluate.bench.core import ce_noise
from saelab.evaluate.bench.seed_stats import seed_summary, t_quantile, welch
from saelab.evaluate.metrics import EvalBudget, measure
from saelab.models import load_model
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import open_sae
from saelab.train.seed_identity import training_identity
from saelab.train.seeds import plan_seeds

NOMINAL = (0.86, 0.94)  # a 90% interval's coverage over 1,500 draws: +-4 points is > 4 standard errors


# ---------------------------------------------------------------- seed statistics on synthetic numbers


def test_t_quantile_matches_the_tables():
    for p, df, want in [(0.95, 1, 6.313752), (0.95, 2, 2.919986), (0.95, 4, 2.131847), (0.975, 10, 2.228139)]:
        assert t_quantile(p, df) == pytest.approx(want, abs=1e-5)
    assert t_quantile(0.05, 3) == pytest.approx(-2.353363, abs=1e-5)
    assert t_quantile(0.95, 1e6) == pytest.approx(1.644854, abs=1e-4)  # the normal's


@pytest.mark.parametrize("n", [2, 3, 5])
def test_t_interval_covers_a_planted_mean_at_its_nominal_rate(n):
    """Per-seed values drawn around a planted mean: the across-seed t-interval covers it ~90% of the
    time. A z-interval (1.645 sd / sqrt n) would cover ~73% at n = 3 and ~60% at n = 2, and fail."""
    rng = np.random.default_rng(n)
    hits = [(s := seed_summary(rng.normal(0.3, 0.02, n)))["ci_low"] <= 0.3 <= s["ci_high"] for _ in range(1500)]
    assert NOMINAL[0] <= np.mean(hits) <= NOMINAL[1], np.mean(hits)


def test_welch_calls_equal_groups_within_noise_at_its_nominal_rate_and_finds_a_real_gap():
    rng = np.random.default_rng(7)
    same = [
        welch(seed_summary(rng.normal(1, 0.1, 3)), seed_summary(rng.normal(1, 0.3, 4)))["within_noise"]
        for _ in range(1500)
    ]
    assert NOMINAL[0] <= np.mean(same) <= NOMINAL[1], np.mean(same)
    gap = [welch(seed_summary(rng.normal(1.5, 0.1, 3)), seed_summary(rng.normal(1, 0.1, 3))) for _ in range(200)]
    assert np.mean([not w["within_noise"] for w in gap]) > 0.95 and all(w["difference"] > 0 for w in gap[:5])
    exact = welch(seed_summary([32, 32]), seed_summary([16, 16]))  # no spread: any difference is real
    assert exact["within_noise"] is False and welch(seed_summary([1.0]), seed_summary([1.0, 2.0])) is None


# ---------------------------------------------------------------- CE / KL intervals


def _planted_ce_rows(rows: int, rng) -> dict:
    """Per-row CE sums of 63 predictions with a true CE recovered of 0.8: ce_zero - ce_clean ~ 2 per token."""
    clean = rng.normal(3.0, 0.5, rows) * 63
    gap = rng.gamma(4.0, 0.5, rows) * 63  # per-row ablation damage, mean 2 per token
    sae = clean + 0.2 * gap + rng.normal(0, 4, rows)
    return {
        "ce_clean": clean,
        "ce_zero": clean + gap,
        "ce_sae": sae,
        "ce_mean": clean + gap / 2,
        "kl": 0.2 * gap,
        "n_pred": np.full(rows, 63.0),
    }


def test_ce_recovered_interval_covers_a_planted_value_and_narrows_with_rows():
    rng = np.random.default_rng(0)
    hits, widths = [], {100: [], 400: []}
    for i in range(200):
        for rows in (100, 400):
            js = ce_noise([_planted_ce_rows(rows, rng)], ["sae"], seed=i, resamples=300)
            iv = js["intervals"]["ce_recovered_zero"]["sae"]
            assert iv["ci_low"] <= iv["value"] <= iv["ci_high"] and iv["n"] == rows
            widths[rows].append(iv["ci_high"] - iv["ci_low"])
            if rows == 400:
                hits.append(iv["ci_low"] <= 0.8 <= iv["ci_high"])
    assert NOMINAL[0] - 0.03 <= np.mean(hits) <= NOMINAL[1] + 0.03, np.mean(hits)  # 200 draws: a wider band
    assert 0.4 < np.mean(widths[400]) / np.mean(widths[100]) < 0.6  # ~ 1 / sqrt(4)


def test_ce_and_kl_intervals_are_around_eval_numbers_which_per_rows_leave_unchanged(tiny_model_dir, text_corpus):
    """On the tiny Llama: the CE pass's per-row sums give back exactly the CE recovered, KL and CE increase
    that `measure` reports, asking for them does not move a single `saelab eval` number, and every SAE is
    resampled on the same rows."""
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    saes = []
    for seed, k in ((0, 32), (1, 4)):
        sae = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint="model.layers.1", k=k))
        sae.reset_parameters(torch.Generator().manual_seed(seed))
        saes.append((sae.eval(), {}))
    budget = EvalBudget(tokens=128, ce_tokens=256)
    plain, _ = measure(lm.model, lm.tokenizer, saes, rows, budget)
    per_row: list = []
    res, _ = measure(lm.model, lm.tokenizer, saes, rows, budget, "cpu", per_row)
    assert [r.to_dict() for r in res] == [r.to_dict() for r in plain]  # eval's numbers, bit for bit
    js = ce_noise(per_row, ["a", "b"], resamples=300)
    for name, r, p in zip("ab", res, per_row):
        d, n = r.downstream, sum(p["n_pred"])
        assert n == d.ce_eval_tokens and len(p["ce_sae"]) == 4
        for key, want in (
            ("ce_clean", d.ce_clean),
            ("ce_sae", d.ce_spliced),
            ("ce_zero", d.ce_zero_ablation),
            ("kl", d.kl),
        ):
            assert sum(p[key]) / n == pytest.approx(want, rel=1e-5)  # the per-row sums add up to eval's means
        zero, sae, clean = (sum(p[k]) for k in ("ce_zero", "ce_sae", "ce_clean"))
        # eval sums float32 tokens, the rows float64: a ratio of two small gaps carries that ~1e-6 rounding
        # amplified by zero / (zero - clean) on this random model (1e3 here, ~1 on a trained one)
        tol = 3e-6 * d.ce_zero_ablation / abs(d.ce_zero_ablation - d.ce_clean)
        for q, want, exact in (
            ("ce_recovered_zero", d.ce_recovered_zero, (zero - sae) / (zero - clean)),
            ("kl", d.kl, sum(p["kl"]) / n),
            ("ce_increase", d.ce_increase, (sae - clean) / n),
        ):
            iv = js["intervals"][q][name]
            assert iv["value"] == pytest.approx(exact, rel=1e-12) and iv["ci_low"] <= iv["value"] <= iv["ci_high"]
            assert iv["value"] == pytest.approx(want, rel=tol, abs=1e-6) and iv["n"] == 4
    assert js["unit"] == "held-out rows of the CE pass" and set(js["comparisons"]) == {"ce_recovered_zero", "kl"}
    assert len(per_row[0]["ce_sae"]) == 4 and len(per_row[0]["err"]) == 2  # each pass its own rows


# ---------------------------------------------------------------- --seeds and seed groups


def _run(tmp_path, tiny_model_dir, text_corpus, name, **kw):
    cfg = train_cfg(tmp_path / name, tiny_model_dir, text_corpus, tokens=2048, checkpoint_every=100_000, **kw)
    return train(cfg, quiet=True)


def _at_k(run: Path, out: Path, k: int) -> list[Path]:
    """A copy of a run folder as if trained at another k (TopK's k changes no weight shape): the run
    manifest's --k and each folder's cfg.json k, nothing else."""
    shutil.copytree(run, out)
    m = json.loads((out / "manifest.json").read_text())
    m["config"]["k"] = [k]
    (out / "manifest.json").write_text(json.dumps(m))
    folders = [out / name for name in m["saes"]]
    for f in folders:
        cfg = json.loads((f / "cfg.json").read_text())
        cfg["k"] = cfg["saelab"]["config"]["k"] = k
        (f / "cfg.json").write_text(json.dumps(cfg))
    return folders


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, text_corpus):
    """`--seeds 2` (seeds 3, 4), a plain `--seed 5` run of the same configuration elsewhere (the lead's way),
    and seed 3's run as if trained at another k."""
    tmp = tmp_path_factory.mktemp("seedci")
    seeds = _run(tmp, tiny_model_dir, text_corpus, "topk", seed=3, seeds=2)
    return SimpleNamespace(
        tmp=tmp,
        seeds=seeds,
        plain=_run(tmp, tiny_model_dir, text_corpus, "topk-seed5", seed=5),
        other_k=SimpleNamespace(dictionaries=_at_k(tmp / "topk" / "seed-3", tmp / "topk-k4", 4)),
    )


def test_seeds_writes_plain_run_folders_that_differ_only_in_seed(runs):
    out = runs.tmp / "topk"
    assert sorted(p.name for p in out.iterdir()) == ["seed-3", "seed-4"]
    m3, m4 = (json.loads((out / f"seed-{s}" / "manifest.json").read_text()) for s in (3, 4))
    assert {k for k in m3["config"] if m3["config"][k] != m4["config"][k]} == {"seed", "out"}
    assert m3["config"]["seeds"] is None and m3["seed"] == 3 and m4["seed"] == 4  # each a plain run
    f3, f4 = (open_sae(p) for p in runs.seeds.dictionaries)
    c3, c4 = f3.cfg["saelab"], f4.cfg["saelab"]
    assert {k for k in c3 if c3[k] != c4[k]} <= {"seed", "train_stats", "checksums"} and (c3["seed"], c4["seed"]) == (
        3,
        4,
    )
    assert not torch.equal(f3.sae.W_dec, f4.sae.W_dec)  # the seed was used
    assert set(runs.seeds.metrics) == {f"seed-{s}/model.layers.1-topk-k8" for s in (3, 4)}


def test_seeds_checks_every_folder_first_and_resume_keeps_finished_ones(runs, tiny_model_dir, text_corpus):
    cfg = train_cfg(runs.tmp / "topk", tiny_model_dir, text_corpus, tokens=2048, seed=3, seeds=3)
    with pytest.raises(UserError, match="seed-3"):  # seed-3 is in the way: refused before anything trains
        plan_seeds(cfg)
    assert not (runs.tmp / "topk" / "seed-5").exists()
    cfg.resume = True
    assert [(c.seed, a) for c, a in plan_seeds(cfg)] == [(3, "done"), (4, "done"), (5, "train")]
    cfg.tokens = 4096
    with pytest.raises(UserError, match="finished run made with --tokens 2048"):
        plan_seeds(cfg)
    with pytest.raises(UserError, match="--seeds must be >= 1"):
        train_cfg(runs.tmp / "x", tiny_model_dir, text_corpus, seeds=0).validate()


def test_bench_groups_seeds_by_configuration_not_by_name(runs, tmp_path):
    dirs = [*runs.seeds.dictionaries, *runs.plain.dictionaries, *runs.other_k.dictionaries]
    folders = [open_sae(d) for d in dirs]
    ids = [training_identity(f.path, f.cfg) for f in folders]
    assert ids[0] == ids[1] == ids[2] and ids[0][1] and ids[3][0] != ids[0][0]  # k=4 differs; manifests read
    out = tmp_path / "bench"
    res = bench(
        BenchConfig(
            sae_dirs=[str(d) for d in dirs], out=str(out), metrics=["core", "seed_groups"], tokens=256, ce_tokens=128
        ),
        quiet=True,
    ).results
    sg = res["seed_groups"]
    assert len(sg["groups"]) == 1 and [m["seed"] for m in sg["groups"][0]["members"]] == [3, 4, 5]
    g = sg["groups"][0]["group"]
    names = [m["dictionary"] for m in sg["groups"][0]["members"]]
    fvu = {d["dictionary"]: d["fvu"] for d in res["core"]["dictionaries"]}
    assert names[0] in fvu and "topk-k4" not in " ".join(names)
    s = sg["values"]["core fvu"][g]
    vals = [fvu[n] for n in names]
    # the values are the noise blocks' points (float64 row sums), eval's float32 sums to ~1e-7
    assert s["n"] == 3 and s["mean"] == pytest.approx(np.mean(vals), rel=1e-5)
    assert s["sd"] == pytest.approx(np.std(vals, ddof=1), rel=1e-3) and s["values"] == pytest.approx(vals, rel=1e-5)
    assert {"core kl", "core ce_recovered_zero", "core cosine", "l0"} <= set(sg["values"])
    md = (out / "report.md").read_text()
    assert "## Seed groups: across-seed mean, sd and 90% t-interval" in md
    assert f"| core fvu | {g} | 3 |" in md and "cfg.json" in md


def test_two_groups_are_compared_by_the_welch_rule(monkeypatch):
    """Two groups on planted values: the seed_groups JSON carries each group's t-interval and a Welch
    verdict (a gap of 10 seed sds is real; a gap inside the spread is within noise), and the report says so."""
    groups = [
        {
            "group": g,
            "configuration": "",
            "run_manifest": True,
            "members": [{"dictionary": f"{g}{i}", "seed": i} for i in range(3)],
        }
        for g in "AB"
    ]
    far = {"A0": 0.10, "A1": 0.11, "A2": 0.12, "B0": 0.20, "B1": 0.21, "B2": 0.22}
    near = {"A0": 0.10, "A1": 0.15, "A2": 0.20, "B0": 0.12, "B1": 0.17, "B2": 0.22}
    blk = lambda v: {"intervals": {"fvu": {d: {"value": x} for d, x in v.items()}}}  # noqa: E731
    b = SimpleNamespace(
        notes=[], l0={}, results={"core": {"noise": blk(far)}, "probing": {"noise": blk(near), "ood_noise": blk(near)}}
    )
    monkeypatch.setattr(seed_groups, "find_groups", lambda _: (groups, []))
    js = seed_groups.compute(b)
    assert set(js["values"]) == {"core fvu", "probing fvu", "probing ood fvu"}
    a = js["values"]["core fvu"]["A"]
    assert a["mean"] == pytest.approx(0.11) and a["ci_low"] == pytest.approx(0.11 - 2.919986 * 0.01 / 3**0.5, abs=1e-6)
    (gap,), (close,) = js["comparisons"]["core fvu"], js["comparisons"]["probing fvu"]
    assert (gap["within_noise"], close["within_noise"]) == (False, True) and gap["difference"] == pytest.approx(-0.1)
    verdicts = {r[0]: r[-1] for title, _, rows in seed_groups.tables(js) if "Welch" in title for r in rows}
    assert verdicts == {"core fvu": "a lower", "probing fvu": "within noise", "probing ood fvu": "within noise"}


def test_an_option_at_its_default_groups_with_a_manifest_that_lacks_it(runs, tmp_path):
    """A run written by an older saelab (its manifest lacks an option now at its default) is the same
    configuration; a non-default value of that option is not."""
    ref = open_sae(runs.seeds.dictionaries[0])
    for value, same in ((None, True), ("mean", False)):
        run = tmp_path / f"old-{value}"
        shutil.copytree(runs.seeds.dictionaries[1].parent, run)
        m = json.loads((run / "manifest.json").read_text())
        m["config"].pop("bias_init") if value is None else m["config"].update(bias_init=value)
        (run / "manifest.json").write_text(json.dumps(m))
        f = open_sae(run / runs.seeds.dictionaries[1].name)
        assert (training_identity(f.path, f.cfg)[0] == training_identity(ref.path, ref.cfg)[0]) is same
