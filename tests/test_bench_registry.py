"""A bench metric is one room: a toy metric registered only inside this test (one `Metric` in the
registry, no other file touched) is accepted by --metrics, runs on the shared model pass (baselines
included), and shows up in its JSON, bench.json, report.md / report.html and a panel of bench.png."""

import json

import pytest

from saelab.evaluate.bench import registry
from saelab.evaluate.bench.config import BenchConfig
from saelab.evaluate.bench.metric import Metric, by_l0, fmt
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae

TITLE = "Toy: latents and vocabulary per dictionary"


def toy_metric(drawn: list) -> Metric:
    def compute(b) -> dict:
        # the model pass is open (needs_model): the tokenizer, the held-out rows and the baselines
        return {
            "vocab": len(b.lm.tokenizer),
            "held_out_rows": int(len(b.rows.heldout_rows)),
            "dictionaries": [{"dictionary": d.name, "kind": d.kind, "d_lat": d.d_lat} for d in b.dicts],
        }

    def tables(js: dict) -> list:
        rows = [[d["dictionary"], d["kind"], d["d_lat"], js["vocab"] / d["d_lat"]] for d in js["dictionaries"]]
        return [(TITLE, ["dictionary", "kind", "latents", "vocab per latent"], rows)]

    def panel(ax, js: dict, l0s: dict) -> None:
        ds = js["dictionaries"]
        by_l0(ax, [d["dictionary"] for d in ds], [d["d_lat"] for d in ds], l0s, [d["kind"] for d in ds], "latents")
        ax.set_title("toy")
        drawn.append((js, ax.figure.axes.index(ax), len(ax.figure.axes)))

    return Metric("toy", "latents per dictionary (a test's metric)", compute, tables, panel, needs_model=True)


@pytest.fixture
def drawn(monkeypatch):
    out: list = []
    monkeypatch.setattr(registry, "METRICS", registry.METRICS + [toy_metric(out)])
    return out


def _folder(tmp_path, tiny_model_dir, corpus):
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint="model.layers.1", k=8))
    prov = Provenance(model_spec=str(tiny_model_dir), model_name="tiny", corpus=str(corpus), context=64)
    return save_sae(sae.eval(), tmp_path / "sae", prov)


def test_a_metric_registered_in_a_test_runs_through_saelab_bench(tmp_path, tiny_model_dir, text_corpus, drawn):
    from saelab.cli import main

    folder = _folder(tmp_path, tiny_model_dir, text_corpus)
    out = tmp_path / "out"
    argv = ["bench", str(folder), "--out", str(out), "--metrics", "core", "toy", "--baselines", "residual"]
    assert main(argv + ["--tokens", "512", "--ce-tokens", "0"]) == 0
    toy = json.loads((out / "toy.json").read_text())
    assert toy["metric"] == "toy" and toy["vocab"] > 0 and toy["held_out_rows"] > 0
    assert [d["dictionary"] for d in toy["dictionaries"]] == ["sae", "residual basis"]
    manifest = json.loads((out / "bench.json").read_text())
    assert manifest["metrics"] == ["core", "toy"] and "toy" in manifest["wall_s"]
    md = (out / "report.md").read_text()
    assert md.index("## Core") < md.index(f"## {TITLE}")  # registry order
    assert f"| sae | sae | 256 | {fmt(toy['vocab'] / 256)} |" in md
    assert TITLE in (out / "report.html").read_text()
    assert drawn == [(toy, 1, 2)]  # its panel, second of two (core's first)
    assert (out / "bench.png").is_file()


def test_the_registry_decides_names_and_defaults(monkeypatch, drawn):
    cfg = BenchConfig(sae_dirs=["x"], out="o")
    assert cfg.chosen_metrics(False) == ["core", "probing", "absorption", "diagnostics", "seed_groups"]
    assert cfg.chosen_metrics(True) == ["core", "probing", "absorption", "diagnostics", "autointerp", "seed_groups"]
    default_toy = [m if m.name != "toy" else Metric(**{**m.__dict__, "default": True}) for m in registry.METRICS]
    monkeypatch.setattr(registry, "METRICS", default_toy)
    assert cfg.chosen_metrics(False) == ["core", "probing", "absorption", "diagnostics", "seed_groups", "toy"]
    assert [m.name for m in registry.all_metrics()] == [
        "core",
        "probing",
        "absorption",
        "diagnostics",
        "autointerp",
        "synthetic",
        "seeds",
        "steering",
        "seed_groups",
        "toy",
    ]
