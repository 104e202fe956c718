"""Sweep (grid, resume, refusal of mixed folders), Pareto (points, matched table, mixed sites) and
decoder-geometry comparison on a tiny random Llama."""

import csv
import json
import shutil

import pytest
import torch
from conftest import train_cfg

from saelab.cli import main
from saelab.errors import UserError
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.storage import read_json
from saelab.study.compare import CompareConfig, compare_folders, max_cosines
from saelab.study.pareto import ParetoConfig, collect_points, curves, matched, pareto
from saelab.study.sweep import run_sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, tiny_model_dir, text_corpus):
    out = tmp_path_factory.mktemp("sweep") / "s"
    base = train_cfg(
        out, tiny_model_dir, text_corpus, k=[4, 12], latents=128, tokens=2048, batch_tokens=512, checkpoint_every=10**9
    )
    run_sweep(base, str(out), ["local", "e2e"], eval_tokens=1024, eval_ce_tokens=256)
    return out, base


def test_sweep_trains_and_evaluates_every_point(sweep_dir):
    out, _ = sweep_dir
    rec = read_json(out / "sweep.json")
    assert set(rec["runs"]) == {"local", "e2e"} and all(r["status"] == "done" for r in rec["runs"].values())
    for loss in ("local", "e2e"):
        man = read_json(out / loss / "manifest.json")
        assert man["config"]["loss"] == loss and len(man["saes"]) == 2  # both k values share the run's forwards
        for name in ("model.layers.1-topk-k4", "model.layers.1-topk-k12"):
            m = read_json(out / loss / name / "metrics.json")["metrics"]
            assert 0 < m["alive"] <= 128 and m["l0"] == pytest.approx(int(name.split("k")[-1]), abs=0.01)
            assert list(m["later_fvu"]) == ["model.layers.2", "model.layers.3"] and m["later_fvu_mean"] > 0
            assert read_json(out / loss / name / "cfg.json")["saelab"]["loss"] == loss


def test_sweep_resumes_without_retraining_and_refuses_mixed_folders(sweep_dir, monkeypatch, tiny_model_dir):
    out, base = sweep_dir
    import saelab.study.sweep as sw

    monkeypatch.setattr(sw, "train", lambda cfg: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(sw, "evaluate_run", lambda *a, **k: pytest.fail("a finished run was evaluated again"))
    run_sweep(base, str(out), ["local", "e2e"], eval_tokens=1024, eval_ce_tokens=256)
    import dataclasses

    other = dataclasses.replace(base, model=str(tiny_model_dir) + "-other")
    with pytest.raises(UserError, match="holds a sweep of a different model"):
        run_sweep(other, str(out), ["local"], eval_tokens=1024, eval_ce_tokens=256)
    with pytest.raises(UserError, match="unknown"):
        run_sweep(base, str(out), ["e4e"])


def test_pareto_writes_curves_and_refuses_mixed_sites(sweep_dir, tmp_path):
    out, _ = sweep_dir
    assert main(["pareto", str(out), "--out", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p" / "pareto.csv")))
    assert sorted((r["loss"], r["k"]) for r in rows) == [("e2e", "12"), ("e2e", "4"), ("local", "12"), ("local", "4")]
    assert (tmp_path / "p" / "pareto.png").stat().st_size > 10_000
    assert main(["pareto", str(out), "--out", str(tmp_path / "p")]) == 2  # exists: refuses without --overwrite
    # an SAE of another hookpoint among the folders
    mixed = tmp_path / "mixed"
    shutil.copytree(out / "local", mixed / "local")
    cfg_p = mixed / "local" / "model.layers.1-topk-k4" / "cfg.json"
    cfg = json.loads(cfg_p.read_text())
    cfg["metadata"]["hook_name"] = cfg["saelab"]["config"]["hookpoint"] = "model.layers.2"
    cfg_p.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="mix hookpoints"):
        pareto(ParetoConfig(folders=[str(mixed)], out=str(tmp_path / "p2")))


def test_pareto_joins_an_earlier_pareto_json_and_names_recipes_and_archs(sweep_dir, tmp_path):
    out, _ = sweep_dir
    first = pareto(ParetoConfig(folders=[str(out / "local")], out=str(tmp_path / "first")))
    # a fine-tuned run and an arch comparison, made by relabelling copies of the e2e folders
    ft = tmp_path / "ft"
    shutil.copytree(out / "e2e", ft)
    for cfg_p in ft.rglob("cfg.json"):
        cfg = json.loads(cfg_p.read_text())
        # the keys a --finetune-fraction run writes (SwitchObjective.record)
        cfg["saelab"].update(loss="local", finetune="kl+mse", finetune_fraction=0.05)
        cfg_p.write_text(json.dumps(cfg))
    res = pareto(ParetoConfig(folders=[str(tmp_path / "first" / "pareto.json"), str(ft)], out=str(tmp_path / "both")))
    by_curve = {(p["loss"], str(p["k"])): p for p in res["points"]}
    assert set(by_curve) == {("local", "4"), ("local", "12"), ("local+ft", "4"), ("local+ft", "12")}
    # the earlier points come back with the numbers they were written with
    for p in first["points"]:
        assert by_curve[("local", str(p["k"]))]["ce_increase"] == p["ce_increase"]
    for cfg_p in ft.rglob("cfg.json"):
        cfg = json.loads(cfg_p.read_text())
        cfg["saelab"]["config"]["arch"] = "batchtopk"
        del cfg["saelab"]["finetune"], cfg["saelab"]["finetune_fraction"]
        cfg_p.write_text(json.dumps(cfg))
    cs = curves(collect_points([str(tmp_path / "first" / "pareto.json"), str(ft)]))
    assert sorted(cs) == ["batchtopk", "topk"]  # one curve per architecture when several are compared
    assert [p["k"] for p in cs["batchtopk"]] == sorted([4, 12], reverse=True)  # by CE increase: k=12 first
    with pytest.raises(UserError, match="not a pareto.json"):
        (tmp_path / "bad.json").write_text("{}")
        pareto(ParetoConfig(folders=[str(tmp_path / "bad.json")], out=str(tmp_path / "bad")))


def test_matched_table_interpolates_inside_every_curve():
    pts = lambda loss, xs: [
        {"ce_increase": x, "l0": 100 * x, "alive": 1000 * x if loss == "local" else 500 * x} for x in xs
    ]
    rows = matched({"local": pts("local", [0.1, 0.3, 0.5]), "e2e": pts("e2e", [0.2, 0.4])}, n=3)
    assert [r["ce_increase"] for r in rows] == pytest.approx([0.2, 0.3, 0.4])
    assert rows[1]["local_l0"] == pytest.approx(30) and rows[1]["e2e_alive"] == pytest.approx(150)
    assert matched({"local": pts("local", [0.1, 0.2]), "e2e": pts("e2e", [0.3, 0.4])}) == []  # no overlap


def _sae(tmp_path, name, w_dec, model_dir, corpus, b_enc=None, site="model.layers.1"):
    d_sae, d = w_dec.shape
    sae = build_sae(SaeConfig("relu", d_in=d, d_sae=d_sae, hookpoint=site))
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        if b_enc is not None:
            sae.b_enc.copy_(b_enc)
    return save_sae(
        sae,
        tmp_path / name,
        Provenance(model_spec=str(model_dir), model_name=str(model_dir), corpus=str(corpus), context=64),
    )


def test_compare_geometry(tmp_path, tiny_model_dir, text_corpus):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g)
    w /= w.norm(dim=1, keepdim=True)
    a = _sae(tmp_path, "a", w, tiny_model_dir, text_corpus)
    same = _sae(tmp_path, "same", w[torch.randperm(96, generator=g)] * 3.0, tiny_model_dir, text_corpus)
    other = _sae(tmp_path, "other", torch.randn(96, 64, generator=g), tiny_model_dir, text_corpus)
    r = compare_folders(CompareConfig(a=str(a), b=str(same), tokens=0))
    assert r["cross_max_cosine"]["mean"] == pytest.approx(1.0, abs=1e-5)  # same directions, permuted and rescaled
    assert r["within_a_max_cosine"]["mean"] < 0.6  # random directions in 64 dimensions
    r2 = compare_folders(CompareConfig(a=str(a), b=str(other), tokens=0))
    assert r2["cross_max_cosine"]["median"] < 0.6 and (a / "compare_other" / "compare.png").stat().st_size > 5000
    with pytest.raises(UserError, match="exists"):
        compare_folders(CompareConfig(a=str(a), b=str(other), tokens=0))
    # alive latents only: half of A's latents can never fire (huge negative bias)
    half = _sae(
        tmp_path, "half", w, tiny_model_dir, text_corpus, b_enc=torch.cat([torch.zeros(48), torch.full((48,), -1e6)])
    )
    r3 = compare_folders(CompareConfig(a=str(half), b=str(a), tokens=1024))
    assert r3["alive_a"] <= 48 and r3["cross_max_cosine"]["n"] == r3["alive_a"]
    wrong = _sae(tmp_path, "wrong", w, tiny_model_dir, text_corpus, site="model.layers.2")
    with pytest.raises(UserError, match="same site"):
        compare_folders(CompareConfig(a=str(a), b=str(wrong), tokens=0))


def test_max_cosines_excludes_self():
    x = torch.eye(4)
    x[3] = torch.tensor([1.0, 1.0, 0, 0]) / 2**0.5
    assert max_cosines(x).tolist() == pytest.approx([2**-0.5, 2**-0.5, 0.0, 2**-0.5])


def test_eval_e2e_adds_alive_and_later_layer_fvu(tmp_path, tiny_model_dir, text_corpus):
    from test_eval import exact_sae

    folder = save_sae(
        exact_sae(64, "model.layers.1"),
        tmp_path / "exact",
        Provenance(model_spec=str(tiny_model_dir), model_name=str(tiny_model_dir), corpus=str(text_corpus), context=64),
    )
    assert main(["eval-e2e", str(folder), "--tokens", "512", "--ce-tokens", "128"]) == 0
    m = read_json(folder / "metrics.json")["metrics"]
    assert max(m["later_fvu"].values()) < 1e-6 and list(m["later_fvu"]) == ["model.layers.2", "model.layers.3"]
    assert m["alive"] == round(128 * (1 - m["dead_fraction"])) and m["alive"] > 100
