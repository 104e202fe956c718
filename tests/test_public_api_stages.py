"""The stages of the public Python API (saelab/api/stages.py) on a tiny random Llama: each writes what its
command writes for the same config, and returns what those files hold.

train from Python and `saelab train` on the same inputs and seed give the same weights, manifest stats and
training log; evaluate returns metrics.json's numbers (and `saelab eval` measures the same); cache_features
gives a LatentCache whose top examples, densities and logit effects are read back from the cache files by
hand here; explain (statistical explainer, no LLM) and score return the records of the JSONL files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from saelab.errors import UserError

CTX = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, text_corpus):
    """(API result, CLI run folder): the same small training run from Python and from the command line."""
    import saelab
    from saelab.cli import main

    base = tmp_path_factory.mktemp("runs")
    kw = dict(
        model=str(tiny_model_dir),
        corpus=str(text_corpus),
        hookpoints=["model.layers.1"],
        latents=128,
        k=[4],
        tokens=2048,
        batch_tokens=512,
        context=CTX,
        buffer_batches=2,
        lr=[2e-3],
        threads=2,
        seed=3,
    )
    res = saelab.train(saelab.TrainConfig(out=str(base / "api"), **kw), quiet=True)
    argv = ["train", "--out", str(base / "cli"), "--model", kw["model"], "--corpus", kw["corpus"]]
    argv += ["--hookpoints", "model.layers.1", "--latents", "128", "--k", "4", "--tokens", "2048"]
    argv += ["--batch-tokens", "512", "--context", str(CTX), "--buffer-batches", "2", "--lr", "2e-3"]
    argv += ["--threads", "2", "--seed", "3"]
    assert main(argv) == 0
    return res, base / "cli"


def test_train_from_python_writes_what_the_cli_writes(trained):
    from saelab.storage import read_tensors

    res, cli = trained
    assert [p.name for p in res.dictionaries] == sorted(p.name for p in cli.iterdir() if (p / "cfg.json").exists())
    folder = res.dictionaries[0]
    assert folder.parent == res.out and (folder / "cfg.json").exists()
    for name in ("sae_weights.safetensors",):
        a, b = read_tensors(folder / name), read_tensors(cli / folder.name / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m_api = json.loads((res.out / "manifest.json").read_text())
    m_cli = json.loads((cli / "manifest.json").read_text())
    assert res.manifest == m_api and res.metrics == {n: r["final"] for n, r in m_api["saes"].items()}
    assert res.metrics == {n: r["final"] for n, r in m_cli["saes"].items()}
    assert m_api["lm_tokens"] == m_cli["lm_tokens"] == 2048 and m_api["data"] == m_cli["data"]

    def log(run):  # the training curves, without wall times
        return [{k: v for k, v in json.loads(x).items() if k != "wall_s"} for x in (run / "train_log.jsonl").open()]

    assert log(res.out) == log(cli) and len(log(cli)) > 0
    df = res.to_pandas()
    assert list(df["dictionary"]) == [folder.name] and {"folder", "fvu", "l0"} <= set(df.columns)
    assert df["fvu"][0] == pytest.approx(res.metrics[folder.name]["fvu"])
    curves = res.curves()
    assert curves["tokens"].tolist() == [r["tokens"] for r in log(res.out)] and curves["tokens"].iloc[-1] == 2048
    assert curves["fvu"].tolist() == [r["saes"][folder.name]["fvu"] for r in log(res.out)]


def test_evaluate_returns_what_metrics_json_holds(trained):
    import saelab

    res = trained[0]
    folder = res.dictionaries[0]
    # reconstruction only (ce_tokens=0: no full forwards); KL / CE come with eval-e2e below
    ev = saelab.evaluate(saelab.EvalConfig(sae_dirs=[str(folder)], tokens=1024, ce_tokens=0), quiet=True)
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert ev.files == [folder / "metrics.json"] and ev.records == [on_disk]
    assert ev.metrics[0]["fvu"] == on_disk["metrics"]["fvu"] and 0 < ev.metrics[0]["fvu"] < 2
    df = ev.to_pandas()
    assert {"sae", "fvu", "mse", "cosine", "l0", "dead_fraction"} <= set(df.columns) and len(df) == 1
    assert "l0_histogram" not in df.columns and df["l0"][0] == ev.metrics[0]["l0"]


def test_evaluate_e2e_prints_what_the_command_printed(trained, capsys):
    """`saelab eval-e2e` on the CLI-trained twin (same weights) and `evaluate(EvalE2EConfig)` on the API-trained
    folder: the same report, the same numbers."""
    import saelab
    from saelab.cli import main

    res, cli = trained
    folder = res.dictionaries[0]
    argv = ["eval-e2e", str(cli / folder.name), "--tokens", "512", "--ce-tokens", "64", "--overwrite"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    cfg = saelab.EvalE2EConfig(sae_dirs=[str(folder)], tokens=512, ce_tokens=64, overwrite=True)
    ev = saelab.evaluate(cfg)
    assert capsys.readouterr().out.replace(str(folder), str(cli / folder.name)) == printed
    assert "later-layer FVU (block:FVU)" in printed and f"FVU {ev.metrics[0]['fvu']:.4f}" in printed
    on_disk = json.loads((cli / folder.name / "metrics.json").read_text())["metrics"]
    assert ev.records == [json.loads((folder / "metrics.json").read_text())]
    assert ev.metrics[0]["later_fvu"].keys() == on_disk["later_fvu"].keys() == {"model.layers.2", "model.layers.3"}
    for block, v in on_disk["later_fvu"].items():
        assert ev.metrics[0]["later_fvu"][block] == pytest.approx(v, rel=1e-5)
    assert {"kl", "ce_increase", "alive", "later_fvu.model.layers.3"} <= set(ev.to_pandas().columns)


def test_bench_result_holds_the_metric_files(trained, tmp_path):
    import saelab

    folder = trained[0].dictionaries[0]
    cfg = saelab.BenchConfig(
        sae_dirs=[str(folder)],
        out=str(tmp_path / "b"),
        metrics=["core"],
        baselines=["residual"],
        tokens=512,
        ce_tokens=64,
    )
    b = saelab.bench(cfg, quiet=True)
    assert b.results == {"core": json.loads((b.out / "core.json").read_text())}
    assert b.manifest == json.loads((b.out / "bench.json").read_text()) and b.report.exists()
    df = b.to_pandas()
    assert list(df["dictionary"]) == [d["name"] for d in b.manifest["dictionaries"]] and len(df) == 2
    assert {"kind", "d_lat", "core.fvu", "core.l0", "core.ce_increase"} <= set(df.columns)
    core = {r["dictionary"]: r for r in b.results["core"]["dictionaries"]}
    fvu = dict(zip(df["dictionary"], df["core.fvu"]))
    assert [fvu[n] for n in core] == [r["fvu"] for r in core.values()] and len(core) == 1
    assert np.isnan(fvu["residual basis"])  # core measures the SAE folders only: the baseline's cell is empty
    per = b.to_pandas("core")
    assert list(per["dictionary"]) == list(core) and "fvu" in per.columns
    with pytest.raises(UserError, match="no metric"):
        b.to_pandas("probing")


@pytest.fixture(scope="module")
def cache(trained, tmp_path_factory):
    import saelab

    folder = trained[0].dictionaries[0]
    out = tmp_path_factory.mktemp("lc") / "cache"
    cfg = saelab.LatentCacheConfig(sae_dirs=[str(folder)], tokens=CTX * 40, out=str(out), batch_rows=8)
    return saelab.cache_features(cfg, progress=False)


def test_cache_command_writes_the_same_cache(trained, cache, tmp_path):
    from saelab.cli import main
    from saelab.storage import read_tensors

    res, cli = trained
    out = tmp_path / "cli_cache"
    argv = ["cache", str(cli / res.dictionaries[0].name), "--tokens", str(CTX * 40), "--batch-rows", "8"]
    assert main(argv + ["--out", str(out)]) == 0
    for name in ("tokens.npy", "row_ids.npy", "excluded.npy"):
        assert np.array_equal(np.load(out / name), np.load(cache.path / name)), name
    (info,) = json.loads((out / "manifest.json").read_text())["dictionaries"].values()
    files = sorted(p.relative_to(cache.path) for p in (cache.path / "dicts").rglob("*.safetensors"))
    assert files == sorted(p.relative_to(out) for p in (out / "dicts").rglob("*.safetensors")) and len(files) >= 3
    for f in files:
        a, b = read_tensors(cache.path / f), read_tensors(out / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def _records_from_files(path, latent: int):
    """(rows, positions, values) of one latent, read straight from its shard file (the format's own words)."""
    from safetensors.numpy import load_file

    m = json.loads((path / "manifest.json").read_text())
    ((name, info),) = m["dictionaries"].items()
    size = info["shard_size"]
    shard = load_file(str(path / "dicts" / info["dir"] / f"shard_{latent // size:05d}.safetensors"))
    a, b = shard["latent_offsets"][latent % size], shard["latent_offsets"][latent % size + 1]
    return shard["row"][a:b].astype(np.int64), shard["pos"][a:b].astype(np.int64), shard["value"][a:b]


def test_latent_cache_object_reads_the_cache_files(cache):
    import saelab

    assert isinstance(cache, saelab.LatentCache) and len(cache.dictionaries) == 1
    m = json.loads((cache.path / "manifest.json").read_text())
    tokens = np.load(cache.path / "tokens.npy")
    fires = np.array([len(_records_from_files(cache.path, j)[0]) for j in range(cache.d_sae())])
    j = int(np.argmax(fires))
    assert cache.density(j) == pytest.approx(fires[j] / m["n_positions"]) and 0 < cache.density(j) <= 1
    rows, pos, vals = _records_from_files(cache.path, j)
    top = cache.top_examples(j, n=5, window=16)
    assert 1 <= len(top) <= 5 and top[0].value == pytest.approx(vals.max())
    assert [e.value for e in top] == sorted((e.value for e in top), reverse=True)
    tok = cache._loaded().tokenizer
    seen = set()
    for e in top:
        assert e.token_ids == tokens[e.row, e.start : e.start + 16].tolist() and len(e.tokens) == 16
        dense = np.zeros(16, np.float32)
        on = (rows == e.row) & (pos >= e.start) & (pos < e.start + 16)
        dense[pos[on] - e.start] = vals[on]
        assert e.activations == dense.tolist() and e.activations[e.peak] == e.value == dense.max()
        assert e.text == tok.decode(e.token_ids)
        assert not any(e.row == r and abs(e.start - s) < 16 for r, s in seen)  # non-overlapping windows
        seen.add((e.row, e.start))
    # logit effects, by hand: the decoder row times the final RMSNorm's weight (its denominator held at 1, as a
    # direction has no scale of its own: families.py) through the tied unembedding
    from safetensors.torch import load_file

    (info,) = m["dictionaries"].values()
    w = load_file(str(cache.path / "dicts" / info["dir"] / "decoder.safetensors"))["W_dec"][j]
    lm = cache._loaded().model
    logits = (w * lm.model.norm.weight)[None] @ lm.lm_head.weight.T
    fx = cache.logit_effects(j, k=5)
    assert [t for _, t, _ in fx.promoted] == logits[0].topk(5).indices.tolist()
    assert [t for _, t, _ in fx.suppressed] == logits[0].topk(5, largest=False).indices.tolist()
    assert fx.promoted[0][2] == pytest.approx(float(logits[0].max()), rel=1e-5)
    assert fx.promoted[0][0] == tok.decode([fx.promoted[0][1]])
    with pytest.raises(UserError, match="outside"):
        cache.density(cache.d_sae())


def test_explain_and_score_return_the_jsonl_records(cache, tmp_path, capsys):
    import saelab

    fires = cache.reader.fire_counts(cache.dictionaries[0])
    latents = sorted(int(j) for j in np.argsort(-fires)[:2])
    small = dict(window=16, n_explain=5, n_score_activating=5, n_score_random=3, n_score_hard=3)
    run_dir = tmp_path / "run"
    cfg = saelab.ExplainConfig(cache=str(cache.path), out=str(run_dir), latents=latents, explainer="stats", **small)
    run = saelab.explain(cfg, progress=False)
    lines = [json.loads(x) for x in (run_dir / "explanations.jsonl").read_text().splitlines()]
    assert run.path == run_dir and run.explanations == {r["latent"]: r for r in lines}
    assert sorted(run.explanations) == latents and run.scores == {} and run.scored == {}
    assert all(r["status"] == "ok" and r["explanation"] for r in lines)

    scored = saelab.score(saelab.ScoreConfig(run=str(run_dir), scorers=["embedding"]), progress=False)
    lines = [json.loads(x) for x in (run_dir / "scores_embedding.jsonl").read_text().splitlines()]
    assert scored.scored == {"embedding": 2} and scored.scores == {"embedding": {r["latent"]: r for r in lines}}
    assert scored.explanations == run.explanations
    # the commands on the same cache write the same records (less their timings) and say what they scored
    from saelab.cli import main

    cli_run = tmp_path / "cli_run"
    argv = ["explain", str(cache.path), "--latents", *map(str, latents), "--explainer", "stats", "--out", str(cli_run)]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in small.items()]
    assert main(argv) == 0 and main(["score", str(cli_run), "--scorers", "embedding"]) == 0
    assert f"saelab: scored embedding: 2 latents -> {cli_run}" in capsys.readouterr().out
    cli = saelab.InterpretationRun.open(cli_run)

    def untimed(recs: dict) -> dict:
        return {j: {k: v for k, v in r.items() if k != "seconds"} for j, r in recs.items()}

    assert untimed(cli.explanations) == untimed(scored.explanations)
    assert untimed(cli.scores["embedding"]) == untimed(scored.scores["embedding"])
    df = scored.to_pandas()
    assert list(df["latent"]) == latents
    assert {"status", "explanation", "fire_count", "embedding.ok", "embedding.auc"} <= set(df.columns)
    assert df["embedding.auc"].tolist() == [scored.scores["embedding"][j]["metrics"]["auc"] for j in latents]


def test_public_names_are_lazy_typed_and_documented():
    """`import saelab` does not import torch; every stage name resolves, documented, with type hints."""
    code = "import sys, saelab; assert 'torch' not in sys.modules; print(len(saelab.__all__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import saelab
    from saelab.api import stages

    for name in stages.__all__ + ["TrainResult", "EvalResult", "BenchResult", "InterpretationRun", "LatentCache"]:
        obj = getattr(saelab, name)
        assert name in saelab.__all__ and name in dir(saelab) and obj.__doc__, name
    for fn in (saelab.train, saelab.evaluate, saelab.bench, saelab.cache_features, saelab.explain, saelab.score):
        assert "return" in fn.__annotations__ and "cfg" in fn.__annotations__, fn.__name__
    with pytest.raises(AttributeError):
        saelab.not_a_public_name  # noqa: B018
