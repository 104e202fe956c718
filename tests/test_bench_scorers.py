"""Scorer validity (issue 30 item 4): on latents with a known meaning (planted token features: a latent
that fires exactly on one word of the tiny model's tokenizer, explained as "the token 'word'"), a scorer
must rank a latent's own explanation above another latent's; the right-vs-wrong AUC and its bootstrap
interval, the donors, `score --validity` and the report's at-chance label."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from saelab.interpret.scorers.base import ScoreResult, auc
from saelab.interpret.validity import donors, planted_token_latents, right_vs_wrong, run_validity, scorer_validity

WINDOW = 16


def test_donors_are_a_derangement_and_deterministic():
    lat = [3, 9, 11, 20, 42, 7]
    d = donors(lat, seed=1)
    assert sorted(d) == sorted(lat) and sorted(d.values()) == sorted(lat)  # each explanation used once
    assert all(d[j] != j for j in lat)
    assert donors(lat, seed=1) == d and donors(lat[::-1], seed=1) == d  # order of the input does not matter
    assert donors([5], 0) == {} and donors([], 0) == {}


def test_right_vs_wrong_auc_and_verdicts():
    rng = np.random.default_rng(0)
    right = {j: float(v) for j, v in enumerate(rng.normal(size=40))}
    v = right_vs_wrong(right, {j: x - 1.0 for j, x in right.items()})
    # the AUC is the pooled right-vs-wrong AUC over all pairs of latents
    pooled = auc([1] * 40 + [0] * 40, list(right.values()) + [x - 1.0 for x in right.values()])
    assert v["auc"] == pytest.approx(pooled) and v["n"] == 40 and v["win_rate"] == 1.0
    assert v["ci_low"] > 0.5 and v["verdict"] == "tells right from wrong"
    assert right_vs_wrong(right, dict(right))["verdict"] == "at chance"  # scores that ignore the explanation
    assert right_vs_wrong(right, {j: x + 3 for j, x in right.items()})["verdict"] == "below chance"
    nan = right_vs_wrong({1: 0.5, 2: float("nan")}, {1: 0.2, 2: 0.1})  # one finite pair: no interval
    assert nan["n"] == 1 and nan["verdict"] == "n/a" and math.isnan(nan["auc"])


def test_interval_covers_a_planted_auc_at_its_nominal_rate():
    """right ~ N(d, 1), wrong ~ N(0, 1): the true AUC is Phi(d / sqrt 2); over 200 draws of 30 latents
    the 95% interval covers it about 95% of the time (and 0.5 for d = 0)."""
    for d in (0.0, 0.8):
        truth = NormalDist().cdf(d / math.sqrt(2))
        rng = np.random.default_rng(7)
        hits = 0
        for rep in range(200):
            r, w = rng.normal(d, 1, 30), rng.normal(0, 1, 30)
            v = right_vs_wrong(dict(enumerate(r)), dict(enumerate(w)), seed=rep)
            hits += v["ci_low"] <= truth <= v["ci_high"]
        assert 0.88 <= hits / 200 <= 0.99, (d, hits)


@pytest.fixture(scope="module")
def planted(tiny_model_dir, text_corpus):
    from transformers import AutoTokenizer

    text = text_corpus.read_text()[:60000]
    return planted_token_latents(AutoTokenizer.from_pretrained(tiny_model_dir), text, window=WINDOW)


def test_planted_latents_fire_exactly_on_their_word(planted, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, expl = planted
    assert len(examples) == 8 and len(set(expl.values())) == 8
    for ex in examples:
        word = expl[ex.latent].removeprefix("the token ").strip("'")
        assert len(ex.activating) == 10 and len(ex.random) == 10
        t = ex.activating[0].tokens[ex.activating[0].peak]  # the planted token
        assert tok.decode([t]) == " " + word
        for e in ex.activating + ex.random:
            on = [x == t for x in e.tokens]
            assert [a == 1.0 for a in e.acts] == on and any(on) == e.activating


def test_embedding_scorer_tells_planted_explanations_from_shuffled(planted, tiny_model_dir):
    from transformers import AutoTokenizer

    from saelab.interpret.scorers.embedding import EmbeddingScorer

    examples, expl = planted
    v = scorer_validity(EmbeddingScorer(AutoTokenizer.from_pretrained(tiny_model_dir)), examples, expl)
    assert v["metric"] == "auc" and v["n"] == len(examples)
    assert v["mean_right"] > v["mean_wrong"] + 0.1 and v["auc"] > 0.85
    assert v["verdict"] == "tells right from wrong"


class _Coin:
    """A scorer whose scores ignore the explanation (a broken scorer): it must be found at chance."""

    name = "embedding"

    def __init__(self):
        self.rng = np.random.default_rng(3)

    def score(self, ex, explanation):
        return ScoreResult(self.name, ex.latent, True, {"auc": float(self.rng.random())})


def test_a_scorer_that_ignores_the_explanation_is_at_chance(planted):
    from saelab.interpret.examples import LatentExamples

    examples = [LatentExamples(j) for j in range(60)]
    v = scorer_validity(_Coin(), examples, {j: f"explanation {j}" for j in range(60)})
    assert v["n"] == 60 and v["ci_low"] < 0.5 < v["ci_high"] and v["verdict"] == "at chance"
    # failed results and results without the metric are left out
    recs = {0: {"ok": False, "metrics": {}}, 1: {"ok": True, "metrics": {"auc": 0.9}}, 2: {"ok": True, "metrics": {}}}
    assert run_validity(recs, {1: {"ok": True, "metrics": {"auc": 0.4}}}, "embedding")["n"] == 1


def _write_run(path, model_dir, examples, expl):
    from saelab.interpret.examples import ExampleConfig
    from saelab.interpret.records import ExplanationRecord

    path.mkdir()
    manifest = {
        "kind": "saelab-interpretation-run",
        "identity": {},
        "label": "planted",
        "cache": str(path / "no-cache"),
        "dictionary": "planted",
        "model_spec": str(model_dir),
        "examples": ExampleConfig(window=WINDOW).to_dict(),
        "latents": sorted(expl),
        "explainer": {"explainer": "planted"},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    lines = [
        json.dumps(ExplanationRecord(ex.latent, "ok", expl[ex.latent], example_ids=ex.ids()).to_dict())
        for ex in examples
    ]
    (path / "explanations.jsonl").write_text("\n".join(lines) + "\n")
    (path / "examples.jsonl").write_text("\n".join(json.dumps(ex.to_dict()) for ex in examples) + "\n")


def test_score_validity_and_report_label(planted, tiny_model_dir, tmp_path):
    from saelab.evaluate.bench.autointerp import tables
    from saelab.interpret.bench_summary import autointerp_summary
    from saelab.interpret.config import ScoreConfig
    from saelab.interpret.records import load_run
    from saelab.interpret.report import ReportConfig, write_report
    from saelab.interpret.scoring_run import score

    examples, expl = planted
    run = tmp_path / "run"
    _write_run(run, tiny_model_dir, examples, expl)
    cfg = ScoreConfig(run=str(run), scorers=["embedding", "surprisal"], validity=True)
    assert score(cfg, progress=False) == {"embedding": 8, "surprisal": 8}
    assert score(cfg, progress=False) == {"embedding": 0, "surprisal": 0}  # resumed: nothing left
    r = load_run(run)
    assert set(r.scores) == {"embedding", "surprisal"} and set(r.validity) == {"embedding", "surprisal"}
    give = donors(sorted(expl))
    for j, rec in r.validity["embedding"].items():
        assert rec["donor"] == give[j] != j and rec["ok"]
        # the same examples as the own-explanation score, another explanation
        assert [p[0] for p in rec["predictions"]] == [p[0] for p in r.scores["embedding"][j]["predictions"]]
    # a scorer whose scores ignore the explanation: its shuffled results equal its own ones -> at chance
    same = [json.dumps(rec | {"donor": give[j]}) for j, rec in sorted(r.scores["surprisal"].items())]
    (run / "validity_surprisal.jsonl").write_text("\n".join(same) + "\n")
    write_report(ReportConfig(runs=[str(run)]), quiet=True)
    md = (run / "report.md").read_text()
    assert "## Scorer validity" in md
    assert "| planted | surprisal (at chance) | lm | auc |" in md
    assert "| planted | embedding | embedding | auc |" in md  # no label on the scorer that works
    rep = json.loads((run / "report.json").read_text())["runs"][0]["scorers"]
    assert rep["embedding"]["validity"]["verdict"] == "tells right from wrong"
    assert rep["surprisal"]["validity"]["auc"] == 0.5 and rep["surprisal"]["validity"]["verdict"] == "at chance"
    # the pages (records.interpretations) carry each scorer's verdict beside its score
    from saelab.interpret.records import interpretations

    pages = interpretations(run, tmp_path, 8)
    assert {s.scorer: s.validity for s in pages[0].scores} == {
        "embedding": "tells right from wrong",
        "surprisal": "at chance",
    }
    # the bench report's autointerp table carries the verdict
    rows = {row[0]: row[-1] for row in tables(autointerp_summary(run))[0][2]}
    assert rows["surprisal"].endswith("at chance") and rows["embedding"].endswith("tells right from wrong")
