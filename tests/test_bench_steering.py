"""bench steering: the judge separates planted concept activations and flags a judge at chance; on the tiny
model, steering along a planted direction (the embedding of one token) raises the judge's concept score with
strength, by the difference-of-means path and by an SAE latent whose decoder row is that direction, while a
zero edit gives bitwise the clean greedy text; the matched-fluency rule picks the best fluent strength; the
whole metric runs through `saelab bench --metrics steering` and its report shows the JSON's numbers; bad
input is refused before any model work."""

import json

import numpy as np
import pytest
import torch

from saelab.errors import UserError
from saelab.evaluate.bench import steering as st
from saelab.evaluate.bench.config import BenchConfig
from saelab.evaluate.bench.metric import BenchState, fmt
from saelab.evaluate.bench.steering_judge import fit_judge, judge_site, pooled
from saelab.evaluate.bench.steering_methods import direction_rows, feature_steer, greedy, neutral_ids, steered
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae

SITE = "model.layers.1"


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from saelab.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: thread hand-offs cost more than the arithmetic
    yield load_model(str(tiny_model_dir))
    torch.set_num_threads(threads)


def test_the_judge_separates_a_planted_concept_and_flags_a_judge_at_chance():
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(48)
    shift[3] = 4.0
    pos, neg = torch.randn(60, 48, generator=g) + shift, torch.randn(80, 48, generator=g)
    j = fit_judge(pos, neg, seed=0)
    assert (j.n_train, j.n_test) == (84, 36)  # balanced: 60 of each class, 70/30
    assert j.accuracy >= 0.9 and not j.at_chance
    assert float(j.score(pos).mean()) > 0.8 > 0.2 > float(j.score(neg).mean())
    same = fit_judge(torch.randn(60, 48, generator=g), torch.randn(60, 48, generator=g), seed=0)
    assert same.at_chance and same.to_dict()["at_chance"] and 0.2 < same.accuracy < st.JUDGE_MIN


def test_steering_along_a_planted_direction_raises_the_concept_score_and_zero_is_the_clean_text(tiny_lm):
    m, tok = tiny_lm.model, tiny_lm.tokenizer
    eos, bos = tok.eos_token_id, tok.bos_token_id
    target = tok(" import", add_special_tokens=False)["input_ids"][0]
    emb = m.get_input_embeddings().weight.detach()
    d = emb[target] / emb[target].norm()  # at a large enough strength the tied unembedding emits `target`
    prompts = neutral_ids(tok)
    _, norms = pooled(m, prompts, [SITE], 1)
    norm = norms[SITE]
    strengths = [0.0, 0.0, 1.0, 2.0, 4.0, 8.0]
    by_dir = steered(
        m, None, prompts, lambda: direction_rows(SITE, torch.stack([d * s * norm for s in strengths]), 1), 6, 12, eos
    )
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=32, hookpoint=SITE, k=4))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec[5] = 3.0 * d  # a latent writing the planted direction (norm 3: the value is divided by it)
    lat = [None, None] + [5] * 4
    vals = [s * norm / 3.0 for s in strengths]
    by_sae = steered(m, sae.eval(), prompts, lambda: feature_steer(lat, vals, 1), 6, 12, eos)
    for p, a, b in zip(prompts, by_dir, by_sae):
        clean = greedy(m, torch.tensor([p] * 6), 12, eos)  # same batch shape, no hook
        assert a[0] == a[1] == b[0] == b[1] == clean[0]  # a zero edit leaves the model bitwise as it was
    # the judge: rows of random tokens with `target` at every other position vs rows of random tokens
    rng = np.random.default_rng(0)
    rows = [[bos] + rng.integers(100, 40000, 16).tolist() for _ in range(80)]
    for r in rows[:40]:
        r[1::2] = [target] * len(r[1::2])
    jsite = judge_site(m, SITE)
    assert jsite != SITE and jsite == "model.layers.2"
    x, _ = pooled(m, rows, [jsite], 1)
    judge = fit_judge(x[jsite][:40], x[jsite][40:], seed=0)
    assert judge.accuracy >= 0.9
    for gens in (by_dir, by_sae):
        frac = [np.mean([g[r].count(target) / len(g[r]) for g in gens]) for r in range(6)]
        assert frac[0] == 0.0 and frac[-1] >= 0.9
        x, _ = pooled(m, [[bos] + [t for t in g[r] if t != eos] for r in range(6) for g in gens], [jsite], 1)
        score = judge.score(x[jsite]).reshape(6, len(prompts)).mean(1).tolist()
        assert all(b >= a - 1e-6 for a, b in zip(score[1:], score[2:])), score  # monotone in strength
        assert score[-1] - score[0] > 0.4, score


def _pt(s, score, ppl, degen):
    return {"strength": s, "concept_score": score, "perplexity": ppl, "degenerate": degen, "texts": []}


def test_matched_fluency_picks_the_best_strength_within_the_perplexity_factor_and_not_degenerate():
    base = {"perplexity": 10.0, "degenerate": 0.0}
    pts = [_pt(0.0, 0.2, 10.0, 0.0), _pt(0.5, 0.5, 19.9, 0.0), _pt(1.0, 0.9, 20.1, 0.0), _pt(2.0, 0.95, 12.0, 0.75)]
    assert st.matched(pts, base) == {"concept_score": 0.5, "strength": 0.5, "perplexity": 19.9}
    assert st.matched(pts[2:], base)["concept_score"] is None  # none fluent enough
    # digits and markup are what the numbers / html concepts look like: not counted as broken; repeats are
    assert not st.broken("0x0023: 0x0041, 1927868237 * 89869747") and not st.broken("<td>%s</td><tr>")
    assert st.broken("the the the the the the the the the the") and st.broken("")
    concepts = [
        {
            "unsteered_score": 0.2,
            "judge": {"at_chance": False},
            "methods": [{"method": "m", "matched": st.matched(pts, base)}],
        },
        {
            "unsteered_score": 0.4,
            "judge": {"at_chance": True},
            "methods": [{"method": "m", "matched": st.matched(pts, base)}],
        },
    ]
    (s,) = st.summary(concepts, ["m"])
    assert (s["concepts"], s["unsteered"], s["matched_score"]) == (1, 0.2, 0.5) and s["gain"] == pytest.approx(0.3)


def test_bench_steering_end_to_end_and_the_report_shows_the_json(tmp_path, tiny_model_dir, text_corpus):
    from saelab.cli import main

    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=128, hookpoint=SITE, k=8))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    prov = Provenance(model_spec=str(tiny_model_dir), model_name="tiny", corpus=str(text_corpus), context=64)
    folder = save_sae(sae.eval(), tmp_path / "sae", prov)
    out = tmp_path / "out"
    argv = ["bench", str(folder), "--out", str(out), "--metrics", "steering", "--task-scale", "0.15"]
    assert main(argv + ["--steer-concepts", "python_code", "html_markup", "--threads", "1"]) == 0
    js = json.loads((out / "steering.json").read_text())
    assert [c["concept"] for c in js["concepts"]] == ["python_code", "html_markup"]
    assert js["site"] == SITE and js["judge_site"] == "model.layers.2" and js["site_norm"] > 0
    assert js["zero_equals_baseline"] == {"sae": True, "difference of means": True}
    base = js["baseline"]
    assert len(base["texts"]) == len(js["prompts"]) and base["perplexity"] > 1
    md = (out / "report.md").read_text()
    for c in js["concepts"]:
        assert 0 <= c["judge"]["accuracy"] <= 1 and c["snippets"] == 12
        assert 0 <= c["features"]["sae"]["latent"] < 128 and c["features"]["sae"]["mean_difference"] > 0
        methods = {m["method"]: m for m in c["methods"]}
        assert list(methods) == ["sae", "difference of means", "prompting"]
        assert [p["strength"] for p in methods["sae"]["points"]] == js["strengths"] == [0.0, *st.STRENGTHS]
        assert [p["strength"] for p in methods["prompting"]["points"]] == [0.0, 1.0]
        for m in methods.values():
            zero = m["points"][0]  # every method's strength 0 is the unsteered text, scored the same
            assert zero["texts"] == base["texts"] and zero["perplexity"] == pytest.approx(base["perplexity"])
            assert zero["concept_score"] == pytest.approx(c["unsteered_score"])
            assert m["matched"] == st.matched(m["points"], base)
            for p in m["points"]:
                row = [c["concept"], m["method"], p["strength"], p["concept_score"], p["perplexity"], p["degenerate"]]
                assert "| " + " | ".join(fmt(v) for v in row) + " |" in md
            best = m["matched"]
            assert f"{best['concept_score']:.3f} (x{best['strength']:g})" in md
    for s in js["summary"]:
        want = np.mean(
            [
                next(m for m in c["methods"] if m["method"] == s["method"])["matched"]["concept_score"]
                for c in js["concepts"]
                if not c["judge"]["at_chance"]
            ]
        )
        assert s["matched_score"] == pytest.approx(want)
        assert f"| {s['method']} | {s['concepts']} | {fmt(s['unsteered'])} | {fmt(s['matched_score'])} |" in md
    assert (out / "bench.png").stat().st_size > 0 and "steering" in json.loads((out / "bench.json").read_text())[
        "wall_s"
    ]


def test_bad_input_is_refused_before_any_model_work(tmp_path):
    cfg = dict(sae_dirs=[str(tmp_path / "none")], out=str(tmp_path / "out"))
    with pytest.raises(UserError, match="unknown steering concept.*sql.*choose from python_code"):
        BenchConfig(**cfg, metrics=["steering"], steer_concepts=["sql"]).validate()
    with pytest.raises(UserError, match="include `steering`"):
        BenchConfig(**cfg, metrics=["core"], steer_concepts=["numbers"]).validate()
    state = BenchState(BenchConfig(**cfg, metrics=["steering"]), ["steering"], tmp_path, [], [], SITE, None, None, True)
    with pytest.raises(UserError, match="needs the bench's model pass"):
        st.compute(state)
