"""The one output-folder helper (saelab/out_folder.py): a folder's kind of run is recognised, another kind
is refused even with --overwrite, the same kind with other settings needs --overwrite, which removes only
what that kind writes; the same settings resume. And the later stages' commands are built from their
config dataclasses (positionals, `--latents 0-9,12`) with their old spellings."""

import dataclasses
import json

import pytest

from saelab.cli import build_parser, main
from saelab.errors import UserError
from saelab.options import add_dataclass_options, build_config, opt
from saelab.out_folder import (
    ACTIVATION_CACHE,
    BENCH_REPORT,
    INTERPRETATION_RUN,
    LATENT_CACHE,
    TRAINING_RUN,
    kind_of,
    open_out,
)


def _training_run(folder):
    (folder / "sae-a").mkdir(parents=True)
    (folder / "sae-a" / "cfg.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"command": "train", "saes": {"sae-a": {}}}))
    (folder / "train_log.jsonl").write_text("{}\n")
    return folder


def _latent_cache(folder, identity="abc"):
    (folder / "dicts" / "x").mkdir(parents=True)
    (folder / "tokens.npy").write_bytes(b"t")
    (folder / "manifest.json").write_text(json.dumps({"identity": identity, "dictionaries": {}, "chunks_done": 0}))
    return folder


def test_each_kind_is_recognised_by_its_own_files(tmp_path):
    assert kind_of(_training_run(tmp_path / "t")) is TRAINING_RUN
    assert kind_of(_latent_cache(tmp_path / "c")) is LATENT_CACHE
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({"kind": "saelab activation cache"}))
    assert kind_of(tmp_path / "a") is ACTIVATION_CACHE
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text(json.dumps({"kind": "saelab-interpretation-run"}))
    assert kind_of(tmp_path / "r") is INTERPRETATION_RUN
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")
    assert kind_of(tmp_path / "u") is None and kind_of(tmp_path / "missing") is None


def test_another_kind_of_run_is_refused_even_with_overwrite(tmp_path):
    run = _training_run(tmp_path / "run")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holds a training run, not a latent cache"):
            open_out(run, LATENT_CACHE, overwrite, identity="abc")
    assert (run / "sae-a" / "cfg.json").exists()  # nothing removed


def test_other_settings_need_overwrite_which_removes_only_this_kinds_files(tmp_path):
    cache = _latent_cache(tmp_path / "cache")
    (cache / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds a latent cache made with other arguments; pass --overwrite"):
        open_out(cache, LATENT_CACHE, False, identity="other")
    folder = open_out(cache, LATENT_CACHE, True, identity="other")
    assert folder.replace and not folder.resume
    folder.prepare()
    folder.done()  # the run completed: what it replaced is gone
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


def test_the_same_settings_resume(tmp_path):
    cache = _latent_cache(tmp_path / "cache")
    assert open_out(cache, LATENT_CACHE, False, identity="abc").resume
    # a latent cache with --overwrite is rebuilt; an interpretation run with the same settings is kept
    assert not open_out(cache, LATENT_CACHE, True, identity="abc").resume
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"kind": "saelab-interpretation-run", "identity": {"a": 1}}))
    assert open_out(run, INTERPRETATION_RUN, True, identity={"a": 1}).resume
    with pytest.raises(UserError, match="interpretation run made with other settings"):
        open_out(run, INTERPRETATION_RUN, False, identity={"a": 2})


def test_files_of_no_known_kind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "shard_00000.x.npy").write_bytes(b"old")
    with pytest.raises(UserError, match="already exists and is not empty; pass --overwrite to replace it$"):
        open_out(out, ACTIVATION_CACHE, False)
    folder = open_out(out, ACTIVATION_CACHE, True)
    folder.prepare()
    folder.done()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="or --resume to continue a run"):
        open_out(out, TRAINING_RUN, False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        open_out(tmp_path / "a_file", LATENT_CACHE, True)
    assert not open_out(tmp_path / "new", LATENT_CACHE, False).replace


def test_training_overwrite_names_its_sae_folders(tmp_path):
    run = _training_run(tmp_path / "run")
    (run / "data").mkdir()
    own = {p.name for p in TRAINING_RUN.own_entries(run)}
    assert own == {"manifest.json", "train_log.jsonl", "sae-a"}


def test_a_report_beside_other_files_refuses_only_its_own(tmp_path):
    out = _training_run(tmp_path / "run")  # a bench report may live in a run folder
    names = ("core.json", "bench.json", "report.md")
    assert not open_out(out, BENCH_REPORT, False, names=names).replace
    (out / "core.json").write_text("{}")
    with pytest.raises(UserError, match="already holds core.json; pass --overwrite to replace the bench report"):
        open_out(out, BENCH_REPORT, False, names=names)
    folder = open_out(out, BENCH_REPORT, True, names=names)
    folder.prepare()
    folder.done()
    assert (out / "core.json").exists()  # rewritten by the bench, not removed first


def test_cache_command_refuses_a_training_run_before_any_model_loads(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    argv = [
        "cache",
        "--neurons",
        "model.layers.0.mlp.down_proj:input",
        "--model",
        str(tmp_path / "no-model"),
        "--out",
        str(run),
        "--tokens",
        "64",
    ]
    assert main(argv + ["--overwrite"]) == 2
    assert "holds a training run, not a latent cache" in capsys.readouterr().err
    assert (run / "sae-a" / "cfg.json").exists()


def test_later_stage_commands_are_built_from_their_dataclasses(tmp_path):
    from saelab.evaluate.bench.config import BenchConfig
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.interpret.config import ExplainConfig, ScoreConfig

    p = build_parser()
    a = p.parse_args(
        [
            "explain",
            "CACHE",
            "--out",
            "R",
            "--latents",
            "0-3,7",
            "--llm",
            "m",
            "--concurrency",
            "2",
            "--show-activations",
        ]
    )
    from saelab.commands import latent_list

    e = build_config(ExplainConfig, a, None, latents=latent_list(a.latents))
    assert (e.cache, e.out, e.latents, e.llm, e.concurrency, e.show_activations) == (
        "CACHE",
        "R",
        [0, 1, 2, 3, 7],
        "m",
        2,
        True,
    )
    assert e.client_options()["concurrency"] == 2 and e.examples().window == 32
    s = build_config(ScoreConfig, p.parse_args(["score", "RUN", "--scorers", "embedding"]), None)
    assert (s.run, s.scorers, s.latents) == ("RUN", ["embedding"], None)
    c = build_config(LatentCacheConfig, p.parse_args(["cache", "A", "B", "--out", "C", "--no-sinks"]), None)
    assert (c.sae_dirs, c.out, c.sinks) == (["A", "B"], "C", False)
    with pytest.raises(UserError, match="--no-sinks cannot be combined"):
        LatentCacheConfig(out="C", neurons="h", sinks=False, sink_norm_factor=2.0).validate()
    b = build_config(BenchConfig, p.parse_args(["bench", "S1", "S2", "--out", "O", "--baselines", "pca"]), None)
    assert (b.sae_dirs, b.baselines, b.tokens, b.chosen_metrics(False)) == (
        ["S1", "S2"],
        ["pca"],
        20_000,
        ["core", "probing", "absorption", "diagnostics", "seed_groups"],
    )
    toml = tmp_path / "c.toml"
    toml.write_text('tokens = 512\nsplit = "train"\n')
    c = build_config(LatentCacheConfig, p.parse_args(["cache", "A", "--out", "C", "--config", str(toml)]), str(toml))
    assert (c.tokens, c.split) == (512, "train")


def test_a_field_can_be_positional():
    import argparse

    @dataclasses.dataclass(kw_only=True)
    class Cfg:
        folders: list[str] = opt(help="folders", positional=True)
        extra: list[str] = opt(default_factory=list, help="more", positional=True)
        port: int = opt(8, "port")

    p = argparse.ArgumentParser()
    add_dataclass_options(p, Cfg)
    ns = p.parse_args(["x", "y", "--port", "9"])
    assert (ns.folders, ns.port) == (["x", "y"], 9)
    with pytest.raises(SystemExit):
        p.parse_args(["--port", "9"])  # the required positional is missing
