"""Issue 33, part A: the output-folder rule of every writer (saelab/out_folder.py, out_lock.py, out_space.py).

--overwrite removes only what the folder's manifest says this kind of run wrote (never "any folder with a
cfg.json"), never another kind of run, never the current folder, never an input; a folder being written
holds a lock (a second writer is refused, naming the first one's PID and command; kill -9 leaves nothing
that blocks); what --overwrite replaces is moved aside and put back when the new run fails; a run whose
output cannot fit on the disk is refused before it touches the folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saelab.cli import main
from saelab.errors import UserError
from saelab.out_folder import (
    ACTIVATION_CACHE,
    INTERPRETATION_RUN,
    LATENT_CACHE,
    TRAINING_RUN,
    kind_of,
    open_out,
)

ROOT = Path(__file__).resolve().parents[1]


def _sae_folder(path, d_in=16, d_sae=64, k=4):
    import torch

    from saelab.sae.base import SaeConfig
    from saelab.sae.folder import Provenance, save_sae
    from saelab.sae.registry import build_sae

    torch.manual_seed(0)
    sae = build_sae(SaeConfig(arch="topk", d_in=d_in, d_sae=d_sae, hookpoint="model.layers.1", k=k))
    return save_sae(sae, path, Provenance(model_spec="embedded"))


def _training_run(folder, saes=("sae-a",), listed=True):
    """A finished training run: its SAE folders, log, manifest (listing them when `listed`) and notes."""
    for n in saes:
        _sae_folder(folder / n)
    manifest = {"command": "train", "seed": 1}
    if listed:
        manifest["saes"] = {n: {"folder": str(folder / n), "final": {}} for n in saes}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "train_log.jsonl").write_text('{"tokens": 1}\n')
    (folder / "notes.txt").write_text("my notes")
    return folder


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), SAELAB_CACHE=os.environ.get("SAELAB_CACHE", ""))


# ------------------------------------------------------------------ case 1, 2, 4: another kind of run


def test_case1_cache_overwrite_into_a_training_run_refused_before_anything(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    sae = _sae_folder(tmp_path / "sae")
    before = _tree(run)
    argv = ["cache", str(sae), "--out", str(run), "--overwrite", "--tokens", "100000000"]
    assert main(argv) == 2
    assert "holds a training run, not a latent cache" in capsys.readouterr().err
    assert _tree(run) == before


def test_case2_explain_overwrite_into_a_training_run_names_the_kind(tmp_path):
    run = _training_run(tmp_path / "run")
    before = _tree(run)
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holds a training run, not an interpretation run"):
            open_out(run, INTERPRETATION_RUN, overwrite, identity={"cache": "x"})
    assert _tree(run) == before


def test_case4_cache_activations_never_replaces_a_training_runs_manifest(tmp_path):
    run = _training_run(tmp_path / "run")
    with pytest.raises(UserError, match="holds a training run, not an activation cache"):
        open_out(run, ACTIVATION_CACHE, True)
    assert json.loads((run / "manifest.json").read_text())["command"] == "train"


def test_case4_cache_into_the_sae_folder_it_reads_is_refused(tmp_path, capsys):
    sae = _sae_folder(tmp_path / "sae")
    before = _tree(sae)
    assert main(["cache", str(sae), "--out", str(sae), "--overwrite", "--tokens", "1024"]) == 2
    assert "error:" in capsys.readouterr().err
    assert _tree(sae) == before


def test_case4_an_input_inside_what_overwrite_replaces_is_refused(tmp_path):
    out = tmp_path / "out"  # a folder of no known kind whose `dicts` (a latent cache's name) holds the input SAE
    sae = _sae_folder(out / "dicts" / "sae")
    with pytest.raises(UserError, match="--overwrite would replace dicts in .*which holds the input"):
        open_out(out, LATENT_CACHE, True, identity="x", inputs=[sae])
    with pytest.raises(UserError, match="is also an input of this run"):
        open_out(sae, LATENT_CACHE, True, identity="x", inputs=[sae])
    assert (sae / "cfg.json").exists()


def test_out_empty_string_is_the_current_folder_and_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = _sae_folder(tmp_path / "someone-elses-sae")
    for out in ("", ".", str(tmp_path)):
        with pytest.raises(UserError, match="is the current folder"):
            open_out(out, TRAINING_RUN, True).prepare()
    assert (other / "cfg.json").exists()


def test_out_empty_string_in_a_train_config_refused(tmp_path, monkeypatch, capsys, tiny_model_dir, text_corpus):
    monkeypatch.chdir(tmp_path)
    other = _sae_folder(tmp_path / "someone-elses-sae")
    cfg = tmp_path / "train.json"
    opts = {"out": "", "overwrite": True, "model": str(tiny_model_dir), "corpus": str(text_corpus), "tokens": 1024}
    opts |= {"hookpoints": ["model.layers.1"], "latents": 64, "k": [4], "batch_tokens": 512, "context": 64}
    cfg.write_text(json.dumps(opts))
    assert main(["train", "--config", str(cfg)]) == 2
    assert "is the current folder" in capsys.readouterr().err
    assert (other / "cfg.json").exists()


# ------------------------------------------------------------------ case 3: --overwrite removes only what it wrote


def test_case3_overwrite_keeps_an_sae_folder_no_manifest_lists(tmp_path):
    run = _training_run(tmp_path / "run", listed=False)  # another run's SAE folder + notes, no list of ours
    _sae_folder(run / "other-run-sae")
    folder = open_out(run, TRAINING_RUN, True)
    folder.prepare()
    folder.done()
    left = sorted(p.name for p in run.iterdir())
    assert left == ["notes.txt", "other-run-sae", "sae-a"]  # manifest and log went; no folder was provably ours


def test_case3_overwrite_removes_the_sae_folders_its_manifest_lists(tmp_path, capsys):
    run = _training_run(tmp_path / "run", saes=("sae-a", "sae-b"))
    _sae_folder(run / "other-run-sae")
    folder = open_out(run, TRAINING_RUN, True)
    folder.prepare()
    err = capsys.readouterr().err
    assert "--overwrite replaces manifest.json, train_log.jsonl, sae-a, sae-b" in err
    assert "leaves notes.txt, other-run-sae" in err
    folder.done()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "other-run-sae"]


def test_case3_train_overwrite_end_to_end(tmp_path, tiny_model_dir, text_corpus):
    from conftest import train_cfg

    from saelab.train.loop import TrainingRun

    run = _training_run(tmp_path / "run", saes=("old-sae",), listed=False)
    _sae_folder(run / "sae-of-another-run")
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, tokens=1024, overwrite=True)).run()
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / "sae-of-another-run" / "sae_weights.safetensors").exists()
    assert (run / "old-sae" / "cfg.json").exists()  # the old manifest did not list it: kept
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["saes"]) == ["model.layers.1-topk-k8"]  # the list the next --overwrite removes
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no lock file, no moved-aside folder left


# ------------------------------------------------------------------ case 5: one writer per folder


_HOLDER = """
import sys, time
from saelab.out_folder import TRAINING_RUN, open_out
f = open_out(sys.argv[1], TRAINING_RUN, False)
f.prepare()
print("locked", flush=True)
time.sleep(60)
"""


def _start_holder(out: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_names_the_writer_and_kill9_leaves_nothing_that_blocks(tmp_path):
    out = tmp_path / "run"
    p = _start_holder(out)
    try:
        with pytest.raises(UserError, match=rf"is being written by PID {p.pid} \(python -c .*\)"):
            open_out(out, TRAINING_RUN, True)
        folder = open_out(tmp_path / "other", TRAINING_RUN, False)  # another folder: free
        folder.prepare()
        folder.done()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (out / ".saelab.lock").exists()  # left by the killed process, but held by nobody
    folder = open_out(out, TRAINING_RUN, False)
    folder.prepare()
    folder.done()
    assert not (out / ".saelab.lock").exists()


def test_kindless_writers_are_refused_while_a_folder_is_written(tmp_path):
    from saelab.storage import refuse_overwrite, refuse_replacing

    out = tmp_path / "run"
    p = _start_holder(out)
    try:
        with pytest.raises(UserError, match=f"being written by PID {p.pid}"):
            refuse_replacing(out, ("report.md",), False, "report")
        with pytest.raises(UserError, match=f"being written by PID {p.pid}"):
            refuse_overwrite(out, True, "--out")
    finally:
        p.kill()
        p.wait()


def test_two_trains_half_a_second_apart(tmp_path, tiny_model_dir, text_corpus):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "saelab", "train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus)]
    base += ["--out", str(out), "--hookpoints", "model.layers.1", "--dict-size", "256", "--k", "8", "--tokens", "8192"]
    base += ["--batch-tokens", "512", "--context", "64", "--threads", "1"]
    procs = []
    for seed in (1, 2):
        procs.append(
            subprocess.Popen([*base, "--seed", str(seed)], stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        )
        time.sleep(0.5)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    winner = 1 + [rc for rc, _ in results].index(0)
    loser_err = results[2 - winner][1]
    assert "is being written by PID" in loser_err or "already exists and is not empty" in loser_err
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = json.loads((out / "model.layers.1-topk-k8" / "cfg.json").read_text())
    assert manifest["seed"] == winner and cfg["saelab"]["seed"] == winner
    logged = [json.loads(x)["steps"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged))  # one run's log, not two interleaved


# ------------------------------------------------------------------ move aside, put back on failure


_FAILING = """
import sys
from pathlib import Path
from saelab.out_folder import TRAINING_RUN, open_out
out = Path(sys.argv[1])
f = open_out(out, TRAINING_RUN, True)
f.prepare()
(out / "manifest.json").write_text('{"command": "train", "new": true}')
(out / "train_log.jsonl").write_text("half")
if sys.argv[2] == "raise":
    raise RuntimeError("the new run failed")
if sys.argv[2] == "interrupt":
    raise KeyboardInterrupt
import os, signal
os.kill(os.getpid(), getattr(signal, sys.argv[2]))
"""


@pytest.mark.parametrize("how", ["raise", "interrupt", "SIGTERM"])
def test_overwrite_puts_back_what_it_replaced_when_the_new_run_fails(tmp_path, how):
    run = _training_run(tmp_path / "run")
    before = _tree(run)
    r = subprocess.run(
        [sys.executable, "-c", _FAILING, str(run), how], capture_output=True, text=True, env=_env(), cwd=ROOT
    )
    assert r.returncode != 0
    assert "--overwrite replaces manifest.json, train_log.jsonl, sae-a" in r.stderr
    assert "the run did not complete; put back in" in r.stderr
    assert _tree(run) == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_kill9_leaves_the_replaced_files_aside_and_the_next_run_says_where(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    r = subprocess.run(
        [sys.executable, "-c", _FAILING, str(run), "SIGKILL"], capture_output=True, text=True, env=_env(), cwd=ROOT
    )
    assert r.returncode == -signal.SIGKILL
    aside = [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert len(aside) == 1 and (aside[0] / "sae-a" / "cfg.json").exists()
    assert kind_of(run) is TRAINING_RUN
    open_out(run, TRAINING_RUN, True)
    assert f"holds {aside[0].name}: files an earlier --overwrite replaced" in capsys.readouterr().err


def test_completed_overwrite_deletes_what_it_replaced(tmp_path):
    run = _training_run(tmp_path / "run")
    folder = open_out(run, TRAINING_RUN, True)
    folder.prepare()
    assert not (run / "sae-a").exists() and (folder.aside / "sae-a" / "cfg.json").exists()
    (run / "manifest.json").write_text("{}")
    folder.done()
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "notes.txt"]


# ------------------------------------------------------------------ disk space, before the folder is touched


def test_open_out_refuses_what_cannot_fit_on_the_disk(tmp_path):
    with pytest.raises(UserError, match=r"needs about 909 TiB of disk space; only .* is free"):
        open_out(tmp_path / "new", ACTIVATION_CACHE, False, need_bytes=10**15)
    assert not (tmp_path / "new").exists()


def test_synthetic_refused_when_its_shards_cannot_fit(tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    out = tmp_path / "syn"
    assert main(["synthetic", "--out", str(out), "--tokens", "100000", "--dim", "64"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"needs about [\d.]+ MiB of disk space; only 977 KiB is free", err), err
    assert not out.exists()
