"""Automated interpretability on a tiny random chat model: examples (windows, peak placement,
disjoint sets), prompts and parsing, metrics, the local client's shared-prefix log-probabilities,
and the whole explain -> score -> report pipeline with resume and recorded failures."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import make_chat_model

from saelab.errors import UserError

CTX = 64


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_model_dir, embedded_folder):
    """The tiny random Llama as a chat model with a 1024-token context."""
    return make_chat_model(tmp_path_factory, tiny_model_dir, embedded_folder, 1024)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, chat_model_dir, text_corpus):
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache import LatentCache
    from saelab.features.latent_cache_writer import write_latent_cache
    from saelab.models import collect_activations, load_model
    from saelab.sae import SaeConfig, build_sae
    from saelab.sae.folder import Provenance, save_sae

    lm = load_model(str(chat_model_dir))
    ids = lm.tokenizer(text_corpus.read_text()[:4000], return_tensors="pt").input_ids[:, :256]
    x = collect_activations(lm.model, ids, ["model.layers.1"])["model.layers.1"][0]
    torch.manual_seed(1)
    sae = build_sae(SaeConfig(arch="topk", d_in=64, d_sae=48, hookpoint="model.layers.1", k=4))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.W_enc.copy_(torch.randn(64, 48) / x.std(0).mean())
    folder = tmp_path_factory.mktemp("sae") / "sae"
    save_sae(
        sae, folder, Provenance(model_spec=str(chat_model_dir), model_name="tiny", corpus=str(text_corpus), context=CTX)
    )
    cfg = LatentCacheConfig(
        sae_dirs=[str(folder)],
        tokens=CTX * 40,
        out=str(tmp_path_factory.mktemp("c") / "cache"),
        neurons="model.layers.1.mlp.down_proj:input",
        neuron_k=4,
    )
    out = write_latent_cache(cfg, progress=False)
    return LatentCache.open(out)


def _small_cfg(**kw):
    from saelab.interpret.examples import ExampleConfig

    base = dict(window=16, n_explain=8, n_score_activating=10, n_score_random=5, n_score_hard=5, n_quantiles=5)
    base.update(kw)
    return ExampleConfig(**base)


def _active_latents(cache, name, n=3):
    f = cache.fire_counts(name)
    return [int(j) for j in np.argsort(-f)[:n]]


# ---------------------------------------------------------------- examples


def test_examples_windows_peak_and_disjoint_sets(cache):
    from saelab.interpret.examples import ExampleSampler

    cfg = _small_cfg()
    name = cache.sae_names[0]
    s = ExampleSampler(cache, name, cfg)
    checked = 0
    for j in _active_latents(cache, name, 6):
        ex = s.sample(j)
        if ex.skip_reason:
            continue
        checked += 1
        rows, pos, vals = cache.latent_records(name, j)
        dense = {}
        for r, p, v in zip(rows, pos, vals):
            dense.setdefault(int(r), np.zeros(CTX))[int(p)] = v
        all_sets = ex.explain + ex.activating + ex.random + ex.hard
        assert len(ex.explain) == 8 and len(ex.activating) == 10 and ex.random
        for e in all_sets:
            assert len(e.tokens) == cfg.window == len(e.acts)
            np.testing.assert_array_equal(e.tokens, cache.tokens[e.row, e.start : e.start + cfg.window])
            np.testing.assert_allclose(
                e.acts, dense.get(e.row, np.zeros(CTX))[e.start : e.start + cfg.window], rtol=1e-6
            )
        for e in ex.explain + ex.activating:
            # the peak sits at cfg.peak (= 12 of 16) unless the window had to shift to stay in the row
            peak_pos = e.start + e.peak
            assert e.acts[e.peak] == max(e.acts) > 0
            if cfg.peak <= peak_pos <= CTX - cfg.window + cfg.peak:
                assert e.peak == cfg.peak == 12
            else:
                assert e.start in (0, CTX - cfg.window)
        for e in ex.random + ex.hard:
            assert max(e.acts) == 0 and e.peak == -1
        # no token position belongs to two examples (explanation vs scoring never overlap)
        seen = set()
        for e in all_sets:
            span = {(e.row, p) for p in range(e.start, e.start + cfg.window)}
            assert not (span & seen)
            seen |= span
        # explanation examples are the strongest windows; scoring examples cover several quantiles
        assert min(e.max_act for e in ex.explain) >= max(e.max_act for e in ex.activating) - 1e-6
        assert len({e.quantile for e in ex.activating}) >= 3
        # hard negatives are peaks of similar latents
        nbs = set(s.neighbours(j))
        for e in ex.hard:
            fired = [
                nb
                for nb in nbs
                if any(
                    r == e.row and e.start <= p < e.start + cfg.window
                    for r, p in zip(*cache.latent_records(name, nb)[:2])
                )
            ]
            assert fired
    assert checked >= 2


def test_rare_latents_are_reported_not_explained(cache):
    from saelab.interpret.examples import ExampleSampler

    name = cache.sae_names[0]
    s = ExampleSampler(cache, name, _small_cfg(min_explain=10**6))
    ex = s.sample(_active_latents(cache, name, 1)[0])
    assert ex.skip_reason and "too few" in ex.skip_reason and not ex.explain
    with pytest.raises(UserError, match="window"):
        ExampleSampler(cache, name, _small_cfg(window=CTX + 1))


# ---------------------------------------------------------------- prompts, parsing, metrics


def test_render_marks_and_levels():
    from saelab.interpret.prompts import render

    pieces = ["The", " big", " cat", " sat", "\n"]
    assert render(pieces, [0, 2, 4, 0, 0]) == "The <<big cat>> sat\\n"
    assert render(pieces, [0, 0, 9, 0, 3], max_act=9, show_activations=True) == "The big <<cat>>(9) sat<<\\n>>(3)"
    assert render(pieces, marked=[True, False, False, False, False]) == "<<The>> big cat sat\\n"
    assert render(pieces, [1, 1, 1, 1, 1], mark=False) == "The big cat sat\\n"


def test_parse_explanation():
    from saelab.interpret.explainer import parse_explanation

    assert parse_explanation("Sure!\n[EXPLANATION]: Python keywords\nmore", False) == ("Python keywords", None)
    assert parse_explanation(' "the word not"\n\nblah', True) == ("the word not", None)
    assert parse_explanation("I think it is cats", False)[0] is None
    assert parse_explanation("", True) == (None, "empty reply")
    assert parse_explanation("[EXPLANATION]:  \n ...", False)[0] is None
    assert parse_explanation("x" * 300, True)[1].startswith("explanation longer")
    lead = "\n\nThe marked tokens have the following common features:\n\n1. **Multi-line comments**: in code\n2. x"
    assert parse_explanation(lead, True) == ("Multi-line comments: in code", None)
    assert parse_explanation("The marked tokens have the following features:", True)[1].startswith("only a lead-in")


def test_parse_binary_list():
    from saelab.interpret.scorers.judged import parse_binary_list

    assert parse_binary_list("Answer: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_binary_list("[1,0]", 3) is None
    assert parse_binary_list("[1, 2, 0]", 3) is None
    assert parse_binary_list("yes no yes", 3) is None


def test_metrics_match_hand_computation():
    from saelab.interpret.scorers.base import auc, classification_metrics

    assert auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert auc([1, 0], [0.5, 0.5]) == 0.5
    # 3 positives, 2 negatives: pairs (pos > neg): 0.9>{0.3,0.6}, 0.5>{0.3}, 0.2>{} -> 3/6
    assert auc([1, 1, 1, 0, 0], [0.9, 0.5, 0.2, 0.3, 0.6]) == pytest.approx(0.5)
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    m = classification_metrics([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert m["recall"] == pytest.approx(2 / 3) and m["true_negative_rate"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(7 / 12) and m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- local client


def test_local_client_shared_prefix_matches_separate_forwards(chat_model_dir):
    from saelab.interpret.clients import YES_NO, LocalClient
    from saelab.interpret.prompts import judge_messages

    c = LocalClient(str(chat_model_dir), batch_size=2)
    prompts = [
        judge_messages("detection", "cats and dogs", t) for t in ["the cat sat", "x = 1 + 2", "a dog barked loud"]
    ]
    shared = c.choice_logprobs(prompts, YES_NO)
    separate = [c.choice_logprobs([p], YES_NO)[0] for p in prompts]
    for a, b in zip(shared, separate):
        for k in ("yes", "no"):
            assert a[k] == pytest.approx(b[k], abs=1e-4)
    # reference: one plain forward of the full prompt
    ids = c._encode(c.template(prompts[1]))
    lp = torch.log_softmax(c.lm.model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
    yes_ids = sorted({c._encode(v)[0] for v in YES_NO["yes"]})
    assert shared[1]["yes"] == pytest.approx(float(torch.logsumexp(lp[yes_ids], 0)), abs=1e-4)
    # generation: greedy, batched with left padding == one at a time
    g2 = c.generate(prompts[:2], max_tokens=6)
    g1 = [c.generate([p], max_tokens=6)[0] for p in prompts[:2]]
    assert [x.text for x in g2] == [x.text for x in g1]
    failures = c.usage.failures
    long = [{"role": "user", "content": "word " * 2000}]
    r = c.generate([long], max_tokens=4)[0]
    assert r.error and "context too long" in r.error
    assert c.choice_logprobs([long])[0] is None
    assert c.usage.failures == failures + 2 and c.usage.calls > 5


# ---------------------------------------------------------------- pipeline


def test_explain_score_report_resume(cache, tmp_path, chat_model_dir):
    from saelab.interpret.config import ExplainConfig, ScoreConfig
    from saelab.interpret.explain_run import explain
    from saelab.interpret.records import load_run
    from saelab.interpret.report import ReportConfig, write_report
    from saelab.interpret.scoring_run import score

    name = cache.sae_names[0]
    lat = _active_latents(cache, name, 3)
    dead = [int(j) for j in np.where(cache.fire_counts(name) == 0)[0][:1]]
    run = tmp_path / "run"
    explain(
        ExplainConfig(cache=str(cache.path), out=str(run), dictionary=name, latents=lat + dead, explainer="stats"),
        _small_cfg(),
        progress=False,
    )
    r = load_run(run)
    assert [r.explanations[j]["status"] for j in lat] == ["ok"] * 3
    for j in dead:
        assert r.explanations[j]["status"] == "skipped" and "too few" in r.explanations[j]["error"]
    rec = r.explanations[lat[0]]
    assert rec["explanation"].startswith("the tokens ")
    ids = rec["example_ids"]
    assert not set(ids["explain"]) & set(ids["activating"] + ids["random"] + ids["hard"])
    # a rerun with the same arguments does nothing; different settings are refused
    n_lines = len((run / "explanations.jsonl").read_text().splitlines())
    explain(
        ExplainConfig(cache=str(cache.path), out=str(run), dictionary=name, latents=lat + dead, explainer="stats"),
        _small_cfg(),
        progress=False,
    )
    assert len((run / "explanations.jsonl").read_text().splitlines()) == n_lines
    with pytest.raises(UserError, match="other settings"):
        explain(
            ExplainConfig(cache=str(cache.path), out=str(run), dictionary=name, latents=lat, explainer="llm"),
            _small_cfg(),
            progress=False,
        )

    n = score(
        ScoreConfig(
            run=str(run),
            scorers=["embedding", "surprisal", "intervention", "detection"],
            judge_mode="logprob",
            llm=str(chat_model_dir),
        ),
        progress=False,
    )
    assert n == {"embedding": 3, "surprisal": 3, "intervention": 3, "detection": 3}
    r = load_run(run)
    for s in ("embedding", "surprisal", "intervention", "detection"):
        res = r.scores[s][lat[0]]
        assert res["ok"], res
    d = r.scores["detection"][lat[0]]
    assert d["mode"] == "logprob" and 0 <= d["metrics"]["auc"] <= 1 and d["n_activating"] == 10
    assert {"balanced_accuracy", "f1", "precision", "recall"} <= set(d["metrics"])
    # the embedding AUC is recomputed from the recorded per-example similarities
    from saelab.interpret.scorers.base import auc

    e = r.scores["embedding"][lat[0]]
    assert e["metrics"]["auc"] == pytest.approx(auc([p[1] for p in e["predictions"]], [p[2] for p in e["predictions"]]))
    assert set(p[0] for p in e["predictions"]) == set(ids["activating"] + ids["random"] + ids["hard"])
    assert math.isfinite(r.scores["intervention"][lat[0]]["metrics"]["score"])

    # crash mid-write: a truncated last line is dropped and that latent is scored again
    p = run / "scores_embedding.jsonl"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    n = score(ScoreConfig(run=str(run), scorers=["embedding", "surprisal"]), progress=False)
    assert n == {"embedding": 1, "surprisal": 0}
    assert len(load_run(run).scores["embedding"]) == 3

    # generate mode on a random model: unparseable answers are counted, never guessed; a scorer that failed
    # every latent is an error (issue 33), its records kept
    try:
        score(
            ScoreConfig(
                run=str(run), scorers=["fuzzing"], judge_mode="generate", batch_examples=5, llm=str(chat_model_dir)
            ),
            progress=False,
        )
    except UserError as e:
        assert "score fuzzing: every latent failed" in str(e) and "usable answers" in str(e)
    fz = load_run(run).scores["fuzzing"][lat[0]]
    assert fz["mode"] == "generate"
    if not fz["ok"]:
        assert "usable answers" in fz["error"] and fz["n_failed_examples"] > 0

    out = write_report(ReportConfig(runs=[str(run)]), quiet=True)
    md = (out / "report.md").read_text()
    assert "embedding" in md and "| 3 |" in md and (out / "hist_embedding_auc.png").exists()
    (out / "report.md").write_text("my notes\n")  # an existing report is never replaced without overwrite
    with pytest.raises(UserError, match="report.md.*--overwrite"):
        write_report(ReportConfig(runs=[str(run)]), quiet=True)
    assert (out / "report.md").read_text() == "my notes\n"
    assert (
        "embedding"
        in (write_report(ReportConfig(runs=[str(run)], overwrite=True), quiet=True) / "report.md").read_text()
    )

    # a second run (neurons) and the comparison
    run2 = tmp_path / "neurons"
    nname = cache.sae_names[1]
    cfg2 = ExplainConfig(
        cache=str(cache.path),
        out=str(run2),
        dictionary=nname,
        latents=_active_latents(cache, nname, 3),
        explainer="stats",
    )
    explain(cfg2, _small_cfg(), progress=False)
    score(ScoreConfig(run=str(run2), scorers=["embedding"]), progress=False)
    cmp = write_report(ReportConfig(runs=[str(run), str(run2)], out=str(tmp_path / "cmp")), quiet=True)
    rep = json.loads((cmp / "report.json").read_text())
    assert rep["comparisons"][0]["scorer"] == "embedding" and math.isfinite(rep["comparisons"][0]["diff"])


def test_llm_explainer_records_failures_and_successes(cache, tmp_path, chat_model_dir):
    """The tiny random model writes gibberish: every reply is either parsed into a phrase or recorded
    as a failure with its raw text; nothing unparsed is stored as an explanation."""
    from saelab.interpret.config import ExplainConfig
    from saelab.interpret.explain_run import explain
    from saelab.interpret.records import load_run

    name = cache.sae_names[0]
    lat = _active_latents(cache, name, 2)
    run = tmp_path / "llm"
    cfg = ExplainConfig(
        cache=str(cache.path),
        out=str(run),
        dictionary=name,
        latents=lat,
        explainer="llm",
        llm=str(chat_model_dir),
        batch_latents=2,
    )
    try:
        explain(cfg, _small_cfg(n_explain=6), progress=False)
    except UserError as e:  # both replies unusable: an error (issue 33), the failures recorded
        assert "explain: every latent failed (2 of 2" in str(e)
    r = load_run(run)
    for j in lat:
        rec = r.explanations[j]
        assert rec["status"] in ("ok", "failed") and rec["raw"] is not None
        if rec["status"] == "ok":
            assert rec["explanation"] and "\n" not in rec["explanation"] and len(rec["explanation"]) <= 200
        else:
            assert rec["explanation"] is None and rec["error"]
        assert rec["prompt_tokens"] > 100
    assert r.manifest["explain_usage"]["calls"] == 2


def test_bad_input(cache, tmp_path):
    from saelab.interpret.config import ExplainConfig, ScoreConfig
    from saelab.interpret.explain_run import explain
    from saelab.interpret.scoring_run import score

    with pytest.raises(UserError, match="several dictionaries"):
        explain(ExplainConfig(cache=str(cache.path), out=str(tmp_path / "a"), explainer="stats"), progress=False)
    with pytest.raises(UserError, match="outside"):
        explain(
            ExplainConfig(
                cache=str(cache.path),
                out=str(tmp_path / "a"),
                dictionary=cache.sae_names[0],
                latents=[10**6],
                explainer="stats",
            ),
            progress=False,
        )
    with pytest.raises(UserError, match="unknown scorer"):
        score(ScoreConfig(run=str(tmp_path / "a"), scorers=["vibes"]))
    with pytest.raises(UserError, match="not an interpretation run"):
        score(ScoreConfig(run=str(tmp_path / "nothing"), scorers=["embedding"]))


def test_cli_explain_score_report(cache, tmp_path, capsys):
    from saelab.cli import main

    name = cache.sae_names[0]
    run = tmp_path / "cli"
    lat = [str(j) for j in _active_latents(cache, name, 2)]
    assert (
        main(
            [
                "explain",
                str(cache.path),
                "--dictionary",
                name,
                "--latents",
                *lat,
                "--explainer",
                "stats",
                "--window",
                "16",
                "--n-explain",
                "8",
                "--n-score-activating",
                "10",
                "--n-score-random",
                "5",
                "--n-score-hard",
                "5",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert main(["score", str(run), "--scorers", "embedding"]) == 0
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "2 explained" in out and "| embedding | embedding | auc |" in out.replace(f"| {run.name} ", "| ")
    assert main(["report", str(run)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["report", str(run), "--overwrite"]) == 0
    assert main(["explain", str(cache.path), "--out", str(tmp_path / "x"), "--explainer", "stats"]) == 2  # ambiguous
    assert "several dictionaries" in capsys.readouterr().err


def test_run_scores_without_its_cache(cache, tmp_path):
    """examples.jsonl makes a run self-contained: copied to a machine without the latent cache (here:
    the manifest points at a cache that does not exist), it scores to the same numbers; the
    intervention scorer, which needs the decoder, says the cache is missing."""
    from saelab.interpret.config import ExplainConfig, ScoreConfig
    from saelab.interpret.examples import ExampleSampler, LatentExamples
    from saelab.interpret.explain_run import explain
    from saelab.interpret.records import load_run, read_jsonl
    from saelab.interpret.scoring_run import score

    name = cache.sae_names[0]
    lat = _active_latents(cache, name, 2)
    run = tmp_path / "run"
    explain(
        ExplainConfig(cache=str(cache.path), out=str(run), dictionary=name, latents=lat, explainer="stats"),
        _small_cfg(),
        progress=False,
    )
    stored = {d["latent"]: d for d in read_jsonl(run / "examples.jsonl")}
    sampler = ExampleSampler(cache, name, _small_cfg())
    for j in lat:  # the stored examples are the sampled ones (ids, tokens, activations)
        a, b = LatentExamples.from_dict(stored[j]), sampler.sample(j)
        assert a.ids() == b.ids() and [e.tokens for e in a.scoring] == [e.tokens for e in b.scoring]
        assert np.allclose([x for e in a.scoring for x in e.acts], [x for e in b.scoring for x in e.acts], rtol=1e-5)
    score(ScoreConfig(run=str(run), scorers=["embedding"]), progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    for f in moved.glob("scores_*.jsonl"):
        f.unlink()
    m = json.loads((moved / "manifest.json").read_text())
    m["cache"] = str(tmp_path / "no-such-cache")
    (moved / "manifest.json").write_text(json.dumps(m))
    assert score(ScoreConfig(run=str(moved), scorers=["embedding"]), progress=False) == {"embedding": 2}
    for j in lat:
        assert load_run(moved).scores["embedding"][j]["metrics"]["auc"] == pytest.approx(
            load_run(run).scores["embedding"][j]["metrics"]["auc"]
        )
    with pytest.raises(UserError, match="cache .* is missing"):
        score(ScoreConfig(run=str(moved), scorers=["intervention"]), progress=False)
