"""`--validate` (circuits/validate.py): the graph's linear prediction of an ablation, the correlations, the
report files, and predicted vs measured on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from random_graph import random_graph

from saelab.circuits.validate import (
    FLAG,
    ValidationReport,
    corpus_prompts,
    pearson,
    predicted_ablation_effects,
    spearman,
)
from saelab.errors import UserError


def test_prediction_is_the_closed_form_of_the_graph():
    """-a_f e_f through (I - M)^-1 (M: per-unit feature edges), then the per-unit edges into the target."""
    g = random_graph(n_layers=4, n_pos=5, n_active=20, seed=3, density=0.7)
    a = g.feature_activations().double()
    n = g.n_sel
    M = g.adjacency[:n, :n].double() / a
    nodes = torch.arange(n)
    for t in range(g.n_targets):
        w = g.adjacency[g.target_index(t), :n].double() / a
        want = w @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - M) @ torch.diag(-a)
        got = predicted_ablation_effects(g, t, nodes)
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5)
        # the direct part alone is minus the edge into the target
        direct = -g.adjacency[g.target_index(t), :n]
        assert not torch.allclose(got, direct)  # the graph has feature-to-feature paths


def test_prediction_of_a_hand_built_chain():
    """f0 (a=2) -> f1 (a=4) -> target, plus f0 -> target directly: ablating f0 moves f1 by 3 x (-2) / 2 = -3,
    the target by -5 (direct) + 8 / 4 x (-3) = -11; ablating f1 moves the target by -8."""
    g = random_graph(n_layers=2, n_pos=2, n_active=2, n_targets=1, seed=0)
    g.active_features = torch.tensor([[0, 1, 5], [1, 1, 6]])
    g.selected_features = torch.tensor([0, 1])
    g.activation_values = torch.tensor([2.0, 4.0])
    g.adjacency.zero_()
    g.adjacency[1, 0] = 3.0
    g.adjacency[g.target_index(0), 0] = 5.0
    g.adjacency[g.target_index(0), 1] = 8.0
    assert predicted_ablation_effects(g, 0, torch.tensor([0, 1])).tolist() == [-11.0, -8.0]
    g.activation_values = torch.tensor([0.0, 4.0])
    with pytest.raises(UserError, match="activation 0"):
        predicted_ablation_effects(g, 0, torch.tensor([1]))


def test_correlations():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, x**3) == pytest.approx(1.0) and pearson(x, x**3) < 0.99
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: average ranks
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    r = np.corrcoef(x, y)[0, 1]
    assert pearson(x, y) == pytest.approx(r)
    assert math.isnan(pearson([1.0], [2.0])) and math.isnan(pearson(x, np.ones(5)))


def _report(pred, meas, threshold=0.5):
    feats = [
        {"layer": 0, "position": 1, "feature": i, "predicted": p, "measured": m}
        for i, (p, m) in enumerate(zip(pred, meas))
    ]
    rows = [{"prompt": "p", "target": " b", "pearson": pearson(pred, meas), "flagged": False, "features": feats}]
    return ValidationReport(rows, pearson(pred, meas), spearman(pred, meas), threshold)


def test_report_flags_and_writes_json_and_plot(tmp_path):
    good = _report([1.0, -2.0, 0.5, 3.0], [0.9, -1.5, 0.7, 2.5])
    assert not good.flagged and "FLAGGED" not in good.message()
    j, png = good.write(tmp_path / "good")
    data = json.loads(j.read_text())
    assert data["format"] == "saelab-validation" and data["flagged"] is False and data["plot"] == "validation.png"
    assert data["pearson"] == pytest.approx(good.pearson, abs=1e-6) and len(data["prompts"][0]["features"]) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _report([1.0, -2.0, 0.5, 3.0], [-0.9, 1.5, 0.7, -2.5])
    assert bad.flagged and FLAG in bad.message() and json.loads(bad.write(tmp_path / "bad")[0].read_text())["flagged"]
    assert _report([1.0, 2.0], [3.0, 3.0]).flagged  # undefined correlation: flagged, not shown as truth


def test_corpus_prompts_are_deterministic_and_distinct(embedded_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_folder)
    ps = corpus_prompts(tok, 20)
    assert ps == corpus_prompts(tok, 20) and len(set(ps)) == 20 and corpus_prompts(tok, 5) == ps[:5]
    assert any("def " in p or "self" in p or "    " in p for p in ps[:10])  # code as well as prose
    assert sum(p.count(" the ") for p in ps[:10]) >= 2
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) in (14, 15, 16) for p in ps)
    with pytest.raises(UserError, match="built-in corpus gave"):
        corpus_prompts(tok, 50, pool=10)


def test_validate_on_a_tiny_model_gives_finite_correlations_and_files(tiny_model_dir, tmp_path):
    from circuit_helpers import tiny_plt

    from saelab.circuits.validate import validate
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    rep = open_replacement(tiny_plt(tiny_model_dir, tmp_path / "plt"))
    lm = load_model(str(tiny_model_dir))
    prompts = [
        "def add(a, b):\n    return a +",
        torch.randint(3, 2000, (10,), generator=torch.Generator().manual_seed(4)),
    ]
    report = validate(lm, rep, prompts, n_features=6, out=tmp_path / "v")
    assert [len(p["features"]) for p in report.prompts] == [6, 6]
    assert math.isfinite(report.pearson) and math.isfinite(report.spearman)
    data = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert data["flagged"] == (report.pearson < 0.5) and data["prompts"][0]["prompt"].startswith("def add")
    top = int(lm.model(input_ids=prompts[1][None]).logits[0, -1].argmax())
    assert data["prompts"][1]["target_token"] == top and data["prompts"][1]["target"] == lm.tokenizer.decode([top])
    assert (tmp_path / "v" / "validation.png").stat().st_size > 1000
    # the most influential features' effects: the graph predicts a real change, the ablation measures one
    f = data["prompts"][1]["features"]
    assert all(x["influence"] >= y["influence"] for x, y in zip(f, f[1:]))
    assert max(abs(x["measured"]) for x in f) > 1e-4 and max(abs(x["predicted"]) for x in f) > 1e-4
    with pytest.raises(UserError, match="at least one prompt"):
        validate(lm, rep, [])


def test_validate_prompts_reads_the_attribute_options_and_writes_the_report(tiny_model_dir, tmp_path, capsys):
    from types import SimpleNamespace

    from circuit_helpers import tiny_clt

    from saelab.circuits.validate import validate_prompts

    rep = tiny_clt(tiny_model_dir, tmp_path / "clt")
    cfg = SimpleNamespace(
        replacement=str(rep),
        model=None,
        device="cpu",
        dtype="float32",
        out=str(tmp_path / "out"),
        max_logits=5,
        logit_prob=0.95,
        max_feature_nodes=0,
        batch_size=64,
        zero_positions=1,
        threads=None,
    )
    report = validate_prompts(cfg, 2, n_features=3)
    assert len(report.prompts) == 2 and all(len(p["features"]) == 3 for p in report.prompts)
    assert report.meta["kind"] == "clt" and "graph vs ablation over 2 prompt(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "validation.json").exists() and (tmp_path / "out" / "validation.png").exists()
    with pytest.raises(UserError, match="at least 1"):
        validate_prompts(cfg, 0)
