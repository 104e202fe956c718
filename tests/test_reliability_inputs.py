"""Issue 33, part E (inputs): corpora whose records are not text, a 20 MB corpus line, checksums of
the big binary files, and a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saelab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------- JSON lines that are not text records


def test_jsonl_text_field_that_is_a_number_names_the_line(tmp_path):
    from saelab.data import source_texts

    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a fine document"}\n\n{"text": 5}\n')
    with pytest.raises(UserError, match=r"c\.jsonl:3: field 'text' is a int \(5\), not a string"):
        list(source_texts(str(p)))


@pytest.mark.parametrize("line, kind", [("7", "int"), ('"just a string"', "str"), ("[1, 2]", "list")])
def test_jsonl_scalar_lines_name_the_line(tmp_path, line, kind):
    from saelab.data import source_texts

    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(UserError, match=rf"c\.jsonl:2 holds a JSON {kind}, not an object with a 'text' field"):
        list(source_texts(str(p)))


# ---------------------------------------------------------------- one long line


@pytest.fixture(scope="module")
def tokenizer(embedded_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_folder)


def _one_line(path: Path, n_chars: int) -> Path:
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma"])
    path.write_text(" ".join(rng.choice(words, n_chars // 5))[:n_chars])  # no newline anywhere
    return path


def test_a_long_line_is_tokenised_in_short_calls_to_the_same_rows(tmp_path, tokenizer):
    """A 1 MB line: no tokenizer call gets more than PIECE_CHARS characters, and the rows are exactly
    those of tokenising the whole line at once (the pieces are cut before a space)."""
    from saelab import data
    from saelab.data import source_texts, tokenize_stream

    piece_chars = getattr(data, "PIECE_CHARS", 1 << 18)

    p = _one_line(tmp_path / "long.txt", 1_000_000)
    calls = []

    def counting(batch, **kw):
        calls.append(sum(len(t) for t in batch))
        return tokenizer(batch, **kw)

    counting.bos_token_id, counting.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = tokenize_stream(source_texts(str(p)), counting, 64)
    assert max(calls) <= piece_chars and len(calls) >= 4
    whole = tokenizer([p.read_text()], add_special_tokens=False)["input_ids"][0] + [tokenizer.eos_token_id]
    body = 64 - (tokenizer.bos_token_id is not None)
    n = len(whole) // body
    expect = np.asarray(whole[: n * body], dtype=np.int32).reshape(n, body)
    if tokenizer.bos_token_id is not None:
        expect = np.concatenate([np.full((n, 1), tokenizer.bos_token_id, np.int32), expect], 1)
    np.testing.assert_array_equal(rows, expect)


def test_tokenising_a_large_corpus_shows_progress(tmp_path, tokenizer, monkeypatch, capsys):
    from saelab.data import load_token_rows

    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    p = _one_line(tmp_path / "long.txt", 1_500_000)
    rows = load_token_rows(str(p), tokenizer, context=64)
    assert len(rows.tokens) > 1000
    err = capsys.readouterr().err
    assert "tokenising long.txt" in err and "100%" in err


def test_ctrl_c_stops_tokenising_a_20mb_line(tmp_path, tiny_model_dir):
    """`saelab cache-activations` over a 20 MB corpus with no newline: progress shows within seconds and
    Ctrl-C (SIGINT) ends the process within a few seconds with `saelab: interrupted` and nothing written.
    (Before: one tokenizer call over the whole line, no progress, and Ctrl-C waited for that call: 13 s.)"""
    p = _one_line(tmp_path / "big.txt", 20_000_000)
    out = tmp_path / "acts"
    cmd = [sys.executable, "-m", "saelab", "cache-activations", "--out", str(out), "--hookpoints", "model.layers.1"]
    cmd += ["--model", str(tiny_model_dir), "--corpus", str(p), "--tokens", "4096", "--context", "64", "--threads", "1"]
    env = {**os.environ, "SAELAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
        t0 = time.time()
        while "tokenising" not in err_path.read_text() and time.time() - t0 < 8 and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # tokenising is under way (the model loaded in about 4 s)
        proc.send_signal(signal.SIGINT)
        t1 = time.time()
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 130 and time.time() - t1 < 5, f"Ctrl-C did not stop it within 5 s (rc {rc})"
    assert "tokenising big.txt" in err_path.read_text()  # progress was shown
    assert "saelab: interrupted" in err_path.read_text()
    assert not list((tmp_path / "cache").rglob("*.npy"))  # no token cache half-written


# ---------------------------------------------------------------- checksums


def _flip_lsb(path: Path, n: int = 2) -> None:
    """Flip the lowest bit of `n` float32s in a safetensors file's data (finite values stay finite)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    for i in range(n):
        raw[start + 4 * (7 + 13 * i)] ^= 1
    path.write_bytes(bytes(raw))


@pytest.fixture
def sae_folder(tmp_path):
    from saelab.sae import SaeConfig, build_sae
    from saelab.sae.folder import Provenance, save_sae

    torch.manual_seed(0)
    sae = build_sae(SaeConfig(arch="topk", d_in=16, d_sae=32, hookpoint="model.layers.1", k=4))
    return save_sae(sae, tmp_path / "sae", Provenance(model_name="tiny", context=64))


def test_sae_folder_records_the_weights_sha256(sae_folder):
    cfg = json.loads((sae_folder / "cfg.json").read_text())
    want = hashlib.sha256((sae_folder / "sae_weights.safetensors").read_bytes()).hexdigest()
    assert cfg["saelab"]["checksums"] == {"sae_weights.safetensors": want}


def test_two_flipped_bytes_in_sae_weights_are_refused(sae_folder, tmp_path, capsys):
    from saelab.cli import main
    from saelab.sae.folder import open_sae

    _flip_lsb(sae_folder / "sae_weights.safetensors")
    with pytest.raises(UserError, match=r"sae_weights\.safetensors is corrupt: its sha256 .* recorded in .*cfg\.json"):
        open_sae(sae_folder)
    # a command: one line, exit 2, nothing written
    rc = main(["export", str(sae_folder), "--format", "saelens", "--out", str(tmp_path / "exported")])
    assert rc == 2 and "is corrupt: its sha256" in capsys.readouterr().err
    assert not (tmp_path / "exported" / "sae_weights.safetensors").exists()


def test_sae_folder_without_checksums_still_loads(sae_folder):
    from saelab.sae.folder import open_sae

    cfg = json.loads((sae_folder / "cfg.json").read_text())
    cfg["saelab"].pop("checksums", None)  # a folder written before checksums existed
    (sae_folder / "cfg.json").write_text(json.dumps(cfg))
    _flip_lsb(sae_folder / "sae_weights.safetensors")
    assert open_sae(sae_folder).sae.cfg.d_sae == 32


def _member(seed: int):
    from saelab.sae import SaeConfig, build_sae

    torch.manual_seed(seed)
    sae = build_sae(SaeConfig(arch="topk", d_in=16, d_sae=32, hookpoint="model.layers.1", k=4))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    return SimpleNamespace(name="s", sae=sae, opt=opt, since_fired=torch.arange(32))


def test_checkpoint_with_flipped_bytes_is_refused_and_old_checkpoints_load(tmp_path):
    from safetensors.torch import load_file, save_file

    from saelab.train.checkpoint import CHECKPOINT, load_checkpoint, read_checkpoint_meta, save_checkpoint

    saved = _member(0)
    save_checkpoint(tmp_path, [saved], {"step": 3})
    assert len(read_checkpoint_meta(tmp_path)["tensors_sha256"]) == 64
    fresh = _member(1)
    load_checkpoint(tmp_path, [fresh])  # intact: loads, the same weights
    torch.testing.assert_close(fresh.sae.W_enc, saved.sae.W_enc)
    _flip_lsb(tmp_path / CHECKPOINT)
    with pytest.raises(UserError, match=r"checkpoint .*checkpoint\.safetensors is corrupt"):
        load_checkpoint(tmp_path, [_member(1)])
    # a checkpoint written before checksums: loads unchecked
    old = tmp_path / "old"
    old.mkdir()
    save_file(load_file(tmp_path / CHECKPOINT), old / CHECKPOINT, metadata={"saelab": json.dumps({"step": 3})})
    load_checkpoint(old, [_member(1)])


@pytest.fixture(scope="module")
def act_cache(tmp_path_factory, tiny_model_dir, text_corpus):
    from saelab.activations.disk_cache import CacheConfig, write_cache

    out = tmp_path_factory.mktemp("acts") / "cache"
    cfg = CacheConfig(
        out=str(out),
        hookpoints=["model.layers.1"],
        model=str(tiny_model_dir),
        corpus=str(text_corpus),
        tokens=2048,
        context=64,
        batch_tokens=512,
        shard_batches=2,
        threads=1,
    )
    return write_cache(cfg)


def _stream(folder: Path):
    from saelab.activations.disk_cache import CachedActivationStream, read_manifest

    return CachedActivationStream(folder, read_manifest(folder), ["model.layers.1"], 64, 8, 4, 32, 0)


def test_activation_shards_are_checked_when_read(act_cache, tmp_path):
    import shutil

    m = json.loads((act_cache / "manifest.json").read_text())
    assert len(m["shards"]) >= 2
    for s in m["shards"]:
        ((name, sha),) = s["sha256"].items()
        assert hashlib.sha256((act_cache / name).read_bytes()).hexdigest() == sha
    bad = tmp_path / "bad"
    shutil.copytree(act_cache, bad)
    shard = bad / next(iter(m["shards"][1]["sha256"]))
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 1  # the low byte of a float32 near the end: still a finite vector
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=rf"{shard.name} is corrupt: its sha256"):
        list(_stream(bad).chunks())
    for s in m["shards"]:  # a cache written before checksums: read unchecked
        del s["sha256"]
    (bad / "manifest.json").write_text(json.dumps(m))
    assert sum(len(c.acts["model.layers.1"]) for c in _stream(bad).chunks()) > 0


# ---------------------------------------------------------------- disk full


def test_disk_full_in_a_write_is_one_line_naming_folder_and_space(tmp_path, monkeypatch):
    import saelab.storage as storage

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise ENOSPC

    monkeypatch.setattr(storage, "save_file", full)
    with pytest.raises(UserError) as e:
        storage.write_tensors(tmp_path / "w.safetensors", {"x": torch.zeros(1000)})
    msg = str(e.value)
    assert f"disk full writing in {tmp_path} (" in msg and "free" in msg and "needs 3.9 KB" in msg
    assert "\n" not in msg and list(tmp_path.iterdir()) == []  # no temporary left behind


def test_disk_full_during_train_is_one_line(tmp_path, tiny_model_dir, text_corpus, monkeypatch, capsys):
    import saelab.storage as storage
    from saelab.cli import main

    monkeypatch.setattr(storage, "save_file", lambda *a, **k: (_ for _ in ()).throw(ENOSPC))
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--model", str(tiny_model_dir), "--corpus", str(text_corpus)]
    argv += ["--hookpoints", "model.layers.1", "--dict-size", "64", "--k", "4", "--tokens", "4096"]
    argv += ["--batch-tokens", "512", "--context", "64", "--checkpoint-every", "1024", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"saelab: error: disk full writing in {out}") and "Traceback" not in "".join(err)


def test_disk_full_in_a_plain_write_names_the_out_folder(tmp_path, monkeypatch, capsys):
    """A full disk in a write not made through storage.py (an appended log line): the CLI's one line names --out."""
    import saelab.activations.disk_cache as dc
    from saelab.cli import main

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dc, "write_cache", full)
    out = tmp_path / "acts"
    assert main(["cache-activations", "--out", str(out), "--hookpoints", "model.layers.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"saelab: error: disk full writing in {out} (") and err.count("\n") == 1


def test_latent_cache_resumes_after_a_disk_full_crash_without_overwrite(tmp_path, tiny_model_dir, text_corpus):
    """The disk fills while the cache writes its first files (before any chunk): rerunning the same
    `saelab cache` continues in that folder, no --overwrite, and gives the cache an uninterrupted run gives."""
    import saelab.features.latent_cache_writer as writer
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache import LatentCache
    from saelab.sae import SaeConfig, build_sae
    from saelab.sae.folder import Provenance, save_sae

    torch.manual_seed(1)
    sae = build_sae(SaeConfig(arch="topk", d_in=64, d_sae=48, hookpoint="model.layers.1", k=6))
    sae_dir = save_sae(
        sae, tmp_path / "sae", Provenance(model_spec=str(tiny_model_dir), corpus=str(text_corpus), context=64)
    )

    def build(out):
        cfg = LatentCacheConfig(sae_dirs=[str(sae_dir)], out=str(out), tokens=64 * 12, chunk_rows=5, shard_size=16)
        return writer.write_latent_cache(cfg, progress=False)

    real = writer.save_npy

    def full_at_row_ids(path, arr):
        if Path(path).name == "row_ids.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, arr)

    out = tmp_path / "cache"
    writer.save_npy = full_at_row_ids
    try:
        with pytest.raises((UserError, OSError)):
            build(out)
    finally:
        writer.save_npy = real
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    resumed = LatentCache.open(build(out))  # the same arguments, no overwrite
    clean = LatentCache.open(build(tmp_path / "clean"))
    np.testing.assert_array_equal(resumed.tokens, clean.tokens)
    np.testing.assert_array_equal(resumed.fire_counts("sae"), clean.fire_counts("sae"))
