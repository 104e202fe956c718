"""bench diagnostics: a hand-built dictionary with planted dense, dead and decoder-norm-outlier latents is
diagnosed exactly so (through `saelab bench` on the tiny model, with and without the core metric's pass),
ultra-rare latents are counted only when the tokens can resolve them, and absorption is grouped by the
frequency band of each letter's main latent."""

import json

import pytest
import torch

from saelab.evaluate.bench import diagnostics as dg
from saelab.evaluate.bench.config import BenchConfig
from saelab.evaluate.bench.metric import fmt
from saelab.evaluate.bench.run import bench
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, open_sae, save_sae

DENSE, DEAD, BIG, SMALL = [5, 9], [0, 1, 2, 3], 17, 40


def test_firing_diagnostics_count_planted_frequencies():
    f = torch.full((100,), 1e-3)
    f[DEAD] = 0.0
    f[[5, 9]] = torch.tensor([0.2, 0.9])  # dense, 9 the densest
    f[10] = 0.1  # exactly 10%: not dense (> 10%)
    f[[20, 21, 22]] = 5e-6  # ultra-rare
    r = dg.firing_diagnostics(f, 200_000)
    assert (r["dead"], r["dense"], r["ultra_rare"]) == (4, 2, 3)
    assert r["dead_fraction"] == 0.04 and r["dense_fraction"] == 0.02 and r["ultra_rare_fraction"] == 0.03
    assert [i for i, _ in r["densest"]] == [9, 5] and r["densest"][0][1] == pytest.approx(0.9)
    assert sum(r["log10_frequency_histogram"]) == 96  # every latent that fired, none lost at the edges
    # 20,000 tokens cannot tell 5e-6 from 0: n/a, not 0
    low = dg.firing_diagnostics(f, 20_000)
    assert low["ultra_rare"] is None and low["dead"] == 4


def test_robust_z_finds_planted_norm_outliers_and_a_unit_decoder_has_none():
    g = torch.Generator().manual_seed(0)
    norms = 1.0 + 0.1 * (torch.rand(512, generator=g) - 0.5)  # |robust z| <= 1.35 for all of these
    norms[BIG], norms[SMALL] = 3.0, 0.01
    r = dg.norm_outliers(norms)
    assert r["outliers"] == 2 and [i for i, _, _ in r["largest"]] == [BIG, SMALL]
    assert r["largest"][0][2] > dg.OUTLIER_Z and r["largest"][1][2] < -dg.OUTLIER_Z
    assert not r["normalised"] and r["median"] == pytest.approx(1.0, abs=0.01)
    unit = dg.norm_outliers(torch.ones(512))
    assert unit["normalised"] and unit["outliers"] == 0 and unit["mad"] == 0.0
    unit_one_off = torch.ones(512)
    unit_one_off[7] = 1.02  # on a unit-norm decoder a 2% row is an anomaly
    assert [i for i, _, _ in dg.norm_outliers(unit_one_off)["largest"]] == [7]


def test_absorption_is_grouped_by_the_band_of_each_letters_main_latent():
    freq = torch.zeros(10)
    freq[[1, 2, 3]] = torch.tensor([0.3, 5e-3, 7e-3])
    letter = lambda c, main, rate, n=10: dict(  # noqa: E731
        letter=c, n_test=n, split_features=len(main), main_latents=main, absorption_rate=rate, absorption_fraction=rate
    )
    entry = {
        "letters": [letter("a", [2], 0.1), letter("b", [3, 1], 0.3), letter("c", [1], 0.8), letter("d", [4], 1.0, 0)]
    }
    rows = dg.absorption_by_band(entry, freq)
    assert [(r["band"], r["letters"]) for r in rows] == [("0.001 .. 0.01", "ab"), (">= 0.1 (dense)", "c")]
    assert rows[0]["absorption_rate"] == pytest.approx(0.2) and rows[0]["split_features"] == 1.5
    assert dg.band_of(0.0) == "dead" and dg.band_of(1e-6) == "< 1e-05" and dg.band_of(0.1) == ">= 0.1 (dense)"


def planted_folder(tmp_path, tiny_model_dir, corpus):
    """A ReLU dictionary (free decoder norms) on the tiny model: every latent's bias set to fire it on ~5% of the
    held-out tokens the bench reads, except 5 and 9, which fire on every token (bias +100), and 0-3, which never
    do (bias -100); decoder row 17 is ten times the others, row 40 a hundredth."""
    from saelab.evaluate.metrics import batches, heldout_selection
    from saelab.models import collect_activations

    sae = build_sae(SaeConfig("relu", d_in=64, d_sae=128, hookpoint="model.layers.1"))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    prov = Provenance(model_spec=str(tiny_model_dir), model_name="tiny", corpus=str(corpus), context=64)
    data = open_sae(save_sae(sae.eval(), tmp_path / "draft", prov)).open_data()
    ids = torch.cat(list(batches(data.rows, heldout_selection(data.rows, 512), 64, "cpu")))
    with torch.no_grad():
        x = collect_activations(data.lm.model, ids, [sae.cfg.hookpoint])[sae.cfg.hookpoint][:, 1:].reshape(-1, 64)
        sae.b_enc.copy_(-torch.quantile(sae.encoder_input(x) @ sae.W_enc + sae.encoder_bias(), 0.95, dim=0))
        sae.b_enc[DENSE] = 100.0
        sae.b_enc[DEAD] = -100.0
        sae.W_dec[BIG] *= 10.0
        sae.W_dec[SMALL] *= 0.01
    return save_sae(sae.eval(), tmp_path / "planted", prov)


def test_bench_diagnoses_the_planted_latents(tmp_path, tiny_model_dir, text_corpus):
    folder = planted_folder(tmp_path, tiny_model_dir, text_corpus)
    kw = dict(sae_dirs=[str(folder)], tokens=512, ce_tokens=0, task_scale=0.05)
    with_core = bench(
        BenchConfig(out=str(tmp_path / "a"), metrics=["core", "absorption", "diagnostics"], **kw), quiet=True
    )
    alone = bench(BenchConfig(out=str(tmp_path / "b"), metrics=["diagnostics"], **kw), quiet=True)
    d = json.loads((tmp_path / "a" / "diagnostics.json").read_text())
    r = d["dictionaries"][0]
    assert r["dictionary"] == "planted" and r["latents"] == 128
    assert sorted(i for i, _ in r["densest"]) == DENSE and all(f == 1.0 for _, f in r["densest"])
    assert r["dense"] == 2 and r["dead"] == len(DEAD)
    assert r["ultra_rare"] is None  # 512 tokens cannot resolve 1e-5
    assert [i for i, _, _ in r["decoder_norms"]["largest"]] == [BIG, SMALL]
    # the same numbers as core's (its firing pass is reused) and as the pass run without core
    core = with_core["core"]["dictionaries"][0]
    assert r["dead_fraction"] == core["dead_fraction"] and r["dense_fraction"] == core["dense_fraction"]
    assert r["absorption_by_band"] and alone["diagnostics"]["dictionaries"][0]["absorption_by_band"] is None
    assert {k: v for k, v in alone["diagnostics"]["dictionaries"][0].items() if k != "absorption_by_band"} == {
        k: v for k, v in r.items() if k != "absorption_by_band"
    }
    # every letter absorption measured lands in exactly one band, and a band's rate is its letters' mean
    letters = {x["letter"]: x for x in with_core["absorption"]["dictionaries"][0]["letters"] if x["n_test"]}
    assert sorted("".join(b["letters"] for b in r["absorption_by_band"])) == sorted(letters)
    for b in r["absorption_by_band"]:
        assert b["band"] in dg.band_order()
        assert b["absorption_rate"] == pytest.approx(
            sum(letters[c]["absorption_rate"] for c in b["letters"]) / len(b["letters"])
        )
    md = (tmp_path / "a" / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| planted | 128 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "4 (3.1%)" and cells[3] == "n/a"
    assert cells[4] == "2 (1.6%)" and cells[6] == "2"
    assert cells[5].startswith(("5: 1.000", "9: 1.000")) and fmt(r["decoder_norms"]["median"]) in cells[7]
    assert "## Absorption by frequency band of each letter's main latent" in md
    assert "## What the diagnostics mean" in md and "robust z > 3.5" in md
    assert any("ultra-rare" in n for n in json.loads((tmp_path / "a" / "bench.json").read_text())["notes"])
