"""Issue 33, part B: a foreign or edited cfg.json is checked where it is read (the field named); sizes are
checked before they allocate (synthetic --features, a cfg.json's d_sae against the weights' header, train
--tokens); budgets that could never finish are refused up front (synthetic's disk, train's "tokens": 1e300);
a command given the wrong kind of input folder says what the folder holds and what it expected."""

import collections
import hashlib
import json
import shutil

import pytest

from saelab.cli import main
from saelab.sae.base import SaeConfig
from saelab.sae.folder import Provenance, save_sae
from saelab.sae.registry import build_sae


def _snapshot(root) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def _refused(argv, root, capsys, *words) -> str:
    """Exit 2 with one `saelab: error:` line holding every word, and nothing under `root` changed."""
    before = _snapshot(root)
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("saelab: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert _snapshot(root) == before, f"{argv} changed files on disk"
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every check here comes before any model loads."""
    import saelab.sae.folder as folder
    import saelab.train.sources as sources

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    for mod in (folder, sources):
        monkeypatch.setattr(mod, "load_model", refuse)


@pytest.fixture
def sae_dir(tmp_path):
    """A tiny saelab SAE folder (d_in 8, 16 latents, topk k=4) under tmp_path/work, and its SAELens export."""
    work = tmp_path / "work"
    sae = build_sae(SaeConfig(arch="topk", d_in=8, d_sae=16, k=4, hookpoint="model.layers.0"))
    folder = save_sae(sae.eval(), work / "sae", Provenance(model_spec="x", model_name="tiny", context=64))
    assert main(["export", str(folder), "--format", "saelens", "--out", str(work / "saelens")]) == 0
    return folder


def _edited(src, dst, path: tuple, value):
    """A copy of the SAE folder `src` whose cfg.json has `value` at `path` (KeyError: the key removed;
    path (): the whole cfg replaced)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "cfg.json").read_text())
    if not path:
        cfg = value
    else:
        d = cfg
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    (dst / "cfg.json").write_text(json.dumps(cfg))
    return dst


EXPORT_BAD = [  # saelab folders edited by hand: (where, value, words the message names)
    (("metadata", "context_size"), "abc", "metadata.context_size"),
    (("saelab", "heldout_fraction"), "x", "saelab.heldout_fraction"),
    (("saelab", "heldout_fraction"), 3.0, "saelab.heldout_fraction"),
    (("metadata",), [1], "metadata must be a JSON object"),
    (("saelab", "sink"), {"bogus": 1}, "bogus in saelab.sink"),
    (("saelab", "sink"), {"first_positions": "one"}, "saelab.sink.first_positions"),
    (("saelab", "training_tokens"), "many", "saelab.training_tokens"),
    (("saelab", "text_field"), 3, "saelab.text_field"),
    (("d_in",), "sixty", "d_in"),
    (("saelab", "config", "d_in"), "sixty", "d_in"),
    (("saelab", "config", "k"), "abc", "k must be an integer"),
    ((), [1, 2], "must hold an object"),
]


@pytest.mark.parametrize(
    "where,value,words", EXPORT_BAD, ids=[f"{'.'.join(w) or 'cfg'}={v!r}" for w, v, _ in EXPORT_BAD]
)
def test_export_names_the_bad_field(sae_dir, tmp_path, capsys, where, value, words):
    bad = _edited(sae_dir, tmp_path / "work" / "bad", where, value)
    _refused(
        ["export", bad, "--format", "saelens", "--out", tmp_path / "work" / "out"], tmp_path / "work", capsys, words
    )
    assert not (tmp_path / "work" / "out").exists()


def test_export_without_top_level_d_in_uses_saelab_config(sae_dir, tmp_path, capsys):
    """Already right: the SAELens keys at the top are a copy; saelab.config is what a saelab folder is read from."""
    bad = _edited(sae_dir, tmp_path / "work" / "bad", ("d_in",), KeyError)
    assert main(["export", str(bad), "--format", "saelens", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "cfg.json").read_text())["d_in"] == 8


IMPORT_BAD = [  # SAELens folders as a user may have them: (where, value, words)
    (("metadata", "context_size"), "abc", "metadata.context_size"),
    (("metadata",), [1], "metadata must be a JSON object"),
    (("d_in",), KeyError, "lacks `d_in`"),
    (("d_in",), "sixty", "d_in must be an integer"),
    (("d_sae",), "x", "d_sae must be an integer"),
    (("d_sae",), 0, "d_sae must be >= 1"),
    (("k",), "abc", "k must be an integer"),
    ((), [1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize(
    "where,value,words", IMPORT_BAD, ids=[f"{'.'.join(w) or 'cfg'}={v!r}" for w, v, _ in IMPORT_BAD]
)
def test_import_names_the_bad_field(sae_dir, tmp_path, capsys, where, value, words):
    bad = _edited(sae_dir.parent / "saelens", tmp_path / "work" / "bad", where, value)
    _refused(["import", bad, "--out", tmp_path / "work" / "out"], tmp_path / "work", capsys, "cfg.json", words)
    assert not (tmp_path / "work" / "out").exists()


SPARSIFY_BAD = [
    ({"d_in": "sixty"}, "d_in must be an integer"),
    ({"k": "abc"}, "k must be an integer"),
    ({"num_latents": "many"}, "num_latents must be an integer"),
    ({"expansion_factor": []}, "expansion_factor"),
]


@pytest.mark.parametrize("edit,words", SPARSIFY_BAD, ids=[next(iter(e)) for e, _ in SPARSIFY_BAD])
def test_import_sparsify_names_the_bad_field(sae_dir, tmp_path, capsys, edit, words):
    sp = tmp_path / "work" / "sp"
    assert main(["export", str(sae_dir), "--format", "sparsify", "--out", str(sp)]) == 0
    cfg_path = next(sp.rglob("cfg.json"))
    cfg = json.loads(cfg_path.read_text()) | edit
    if "expansion_factor" in edit:
        cfg.pop("num_latents", None)
    cfg_path.write_text(json.dumps(cfg))
    _refused(["import", sp, "--out", tmp_path / "work" / "out"], tmp_path / "work", capsys, words)


def test_huge_d_sae_is_checked_against_the_weights_header_before_building(sae_dir, tmp_path, capsys, monkeypatch):
    """cfg.json says 10^12 latents, the weights hold 16: refused from the safetensors header, before the
    dictionary is built (building it would allocate 32 TB)."""
    import saelab.sae.folder as folder

    def no_build(*a, **k):
        raise AssertionError("the SAE was built before its weight shapes were checked")

    monkeypatch.setattr(folder, "build_sae", no_build)
    bad = _edited(sae_dir, tmp_path / "work" / "huge", ("saelab", "config", "d_sae"), 10**12)
    cfg = json.loads((bad / "cfg.json").read_text())
    (bad / "cfg.json").write_text(json.dumps(cfg | {"d_sae": 10**12}))
    _refused(
        ["export", bad, "--format", "saelens", "--out", tmp_path / "work" / "out"],
        tmp_path / "work",
        capsys,
        "W_enc has shape (8, 16), cfg.json says (8, 1000000000000)",
    )


def test_synthetic_huge_features_refused_before_allocating(tmp_path, capsys, monkeypatch):
    import saelab.evaluate.synthetic_data as sd

    def no_truth(*a, **k):
        raise AssertionError("the true dictionary was made before its size was checked")

    monkeypatch.setattr(sd, "make_truth", no_truth)
    (tmp_path / "keep").write_text("x")
    _refused(
        ["synthetic", "--features", "100000000000", "--out", tmp_path / "syn"],
        tmp_path,
        capsys,
        "--features 100000000000",
        "memory",
    )


def test_synthetic_tokens_beyond_the_free_disk_refused_before_writing(tmp_path, capsys, monkeypatch):
    import saelab.evaluate.synthetic_data as sd

    def no_write(*a, **k):
        raise AssertionError("shards were written before the disk space was checked")

    monkeypatch.setattr(sd, "write_tensors", no_write)
    monkeypatch.setattr(sd, "_write_npy", no_write)
    (tmp_path / "keep").write_text("x")
    err = _refused(
        ["synthetic", "--tokens", "1000000000000", "--dim", "256", "--out", tmp_path / "syn"],
        tmp_path,
        capsys,
        "931 TiB",
        "free",
    )
    assert str(tmp_path / "syn") in err
    # a small cache on a nearly full disk: 1,000 vectors x 8 dims x 4 bytes (+ 16 x 8 x 4 of truth) > 1,000 bytes
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    _refused(
        ["synthetic", "--tokens", "1000", "--dim", "8", "--features", "16", "--k-true", "2", "--out", tmp_path / "syn"],
        tmp_path,
        capsys,
        "31.8 KiB",
        "1000 B is free",
    )


@pytest.mark.parametrize("tokens", [1e300, 10**15])
def test_train_token_budget_that_never_finishes_refused(tmp_path, capsys, no_model, tokens):
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps({"tokens": tokens, "out": str(tmp_path / "run")}))
    _refused(["train", "--config", cfg], tmp_path, capsys, "--tokens", "no run can finish")


def test_train_row_order_that_cannot_fit_in_memory_refused(tmp_path, capsys, no_model):
    """10^13 tokens of 64-token rows: the visiting order alone is 2.5 TB of int64."""
    (tmp_path / "keep").write_text("x")
    _refused(
        ["train", "--tokens", str(10**13), "--context", "64", "--out", tmp_path / "run"],
        tmp_path,
        capsys,
        "--tokens 10,000,000,000,000",
        "TiB of memory",
    )


@pytest.fixture
def training_run(sae_dir):
    """A training run folder (manifest, log, one SAE folder) beside the SAE folder."""
    run = sae_dir.parent / "run"
    shutil.copytree(sae_dir, run / "sae")
    (run / "manifest.json").write_text(json.dumps({"command": "train", "saes": ["sae"]}))
    (run / "train_log.jsonl").write_text("{}\n")
    return run


def test_score_given_a_training_run(training_run, capsys):
    _refused(["score", training_run], training_run.parent, capsys, "holds a training run, not an interpretation run")


def test_explain_given_a_training_run(training_run, capsys):
    out = training_run.parent / "expl"
    _refused(
        ["explain", training_run, "--out", out], training_run.parent, capsys, "holds a training run, not a latent cache"
    )


def test_report_given_a_training_run(training_run, capsys):
    """Today: exit 0 with an empty report written into --out."""
    out = training_run.parent / "report"
    _refused(
        ["report", training_run, "--out", out],
        training_run.parent,
        capsys,
        "holds a training run, not an interpretation run",
    )


@pytest.mark.parametrize("option", ["--explanations", "--cache"])
def test_dashboard_given_a_training_run_as_input(training_run, sae_dir, capsys, no_model, option):
    out = training_run.parent / "dash"
    _refused(
        ["dashboard", sae_dir, option, training_run, "--out", out],
        training_run.parent,
        capsys,
        "holds a training run, not a",
    )


def test_dashboard_given_a_training_run_as_sae(training_run, capsys, no_model):
    out = training_run.parent / "dash"
    _refused(
        ["dashboard", training_run, "--out", out],
        training_run.parent,
        capsys,
        "holds a training run, not an SAE folder",
        "its SAE folder(s): sae",
    )


def test_score_given_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _refused(["score", tmp_path / "empty"], tmp_path, capsys, "is empty, not an interpretation run")
