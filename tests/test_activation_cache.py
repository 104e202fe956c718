"""The activation cache holds exactly what training streams (same rows, sinks left out), a cached
stream visits every vector once per epoch, training from it learns without loading the LM, and a
cache that does not fit the run is refused before anything is written."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import cli, train_cfg

from saelab.activations.disk_cache import CacheConfig, CachedActivationStream, read_manifest, shard_path, write_cache
from saelab.activations.stream import ActivationStream
from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.models import load_model
from saelab.sinks import SinkConfig, special_ids
from saelab.train import sources as trainer_mod
from saelab.train.loop import TrainingRun

HOOKS = ["model.layers.1", "model.layers.2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model_dir, text_corpus):
    out = tmp_path_factory.mktemp("cache") / "acts"
    write_cache(
        CacheConfig(
            out=str(out),
            hookpoints=HOOKS,
            model=str(tiny_model_dir),
            corpus=str(text_corpus),
            tokens=16384,
            context=64,
            batch_tokens=512,
            shard_batches=4,
            threads=2,
        )
    )
    return out


def test_cache_holds_the_training_stream(cache, tiny_model_dir, text_corpus):
    m = read_manifest(cache)
    assert m["hookpoints"] == HOOKS and m["widths"] == {h: 64 for h in HOOKS} and m["context"] == 64
    assert m["model"]["spec"] == str(tiny_model_dir) and len(m["shards"]) == 16384 // (8 * 4 * 64)
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    assert m["data"]["fingerprint"] == rows.fingerprint
    stream = ActivationStream(
        lm.model, rows, HOOKS, 64, 8, 4, 256, 0, SinkConfig(), special_ids(lm.tokenizer)
    )  # 8 rows x 64 per batch, 256 rows
    for c in (0, 3):
        ref = stream.chunk(c)
        for h in HOOKS:
            a = np.load(shard_path(cache, c, h), mmap_mode="r")
            assert isinstance(a, np.memmap) and a.dtype == np.float32
            assert torch.equal(torch.from_numpy(np.array(a)), ref.acts[h])
        s = m["shards"][c]
        assert s["vectors"] == ref.acts[HOOKS[0]].shape[0] and s["vectors"] + s["excluded"] == s["lm_tokens"]
        assert s["excluded"] >= s["lm_tokens"] // 64  # at least position 0 of every row (the sink)


def test_cached_stream_visits_every_vector_once_per_epoch(cache):
    m = read_manifest(cache)
    total = m["lm_tokens"]
    st = CachedActivationStream(cache, m, HOOKS, 64, 8, 2, total // 64, seed=3)
    got = {h: torch.cat([c.acts[h] for c in st.chunks()]) for h in HOOKS}
    ref = {
        h: torch.from_numpy(np.concatenate([np.load(shard_path(cache, s["index"], h)) for s in m["shards"]]))
        for h in HOOKS
    }
    n = ref[HOOKS[0]].shape[0]
    assert abs(got[HOOKS[0]].shape[0] - n) <= st.n_chunks  # rounding of vectors per chunk only
    k = min(n, got[HOOKS[0]].shape[0])
    # rows stay aligned across hookpoints, and the chunks are a shuffle of the cache (no repeats)
    key = lambda t: t[:, :4].double().sum(1)  # noqa: E731
    pairs_ref = Counter(zip(key(ref[HOOKS[0]]).tolist(), key(ref[HOOKS[1]]).tolist()))
    pairs_got = Counter(zip(key(got[HOOKS[0]][:k]).tolist(), key(got[HOOKS[1]][:k]).tolist()))
    assert all(pairs_ref[p] >= c for p, c in pairs_got.items())  # (identical prefixes give identical vectors)
    assert not torch.equal(got[HOOKS[0]][:k], ref[HOOKS[0]][:k])  # shuffled
    again = CachedActivationStream(cache, m, HOOKS, 64, 8, 2, total // 64, seed=3).chunk(5)
    assert torch.equal(again.acts[HOOKS[1]], list(st.chunks(5))[0].acts[HOOKS[1]])  # resumable: chunk c is fixed


def test_training_from_the_cache_learns_without_the_lm(tmp_path, cache, tiny_model_dir, text_corpus, monkeypatch):
    from test_train import _heldout_fvu

    from saelab.sae import build_sae
    from saelab.sae.folder import load_sae

    def no_lm(*a, **k):
        raise AssertionError("the LM must not load when training from a cache")

    monkeypatch.setattr(trainer_mod, "load_model", no_lm)
    cfg = train_cfg(
        tmp_path / "run", tiny_model_dir, "ignored", from_activations=str(cache), k=[4, 16], tokens=32768
    )  # 2 epochs of the 16k-token cache
    folders = TrainingRun(cfg).run()
    monkeypatch.undo()
    assert len(folders) == 2
    saes = [load_sae(f) for f in folders]
    assert saes[0][1]["saelab"]["corpus"] == str(text_corpus)  # eval finds the held-out split of the right corpus
    fvu4, fvu16, fvu_rand = _heldout_fvu(
        tiny_model_dir, text_corpus, [s for s, _ in saes] + [build_sae(saes[1][0].cfg)]
    )
    assert fvu16 < fvu4 < 0.6 * fvu_rand


def test_a_cache_that_does_not_fit_is_refused(tmp_path, cache, tiny_model_dir, embedded_folder):
    def run(**kw):
        base = dict(from_activations=str(cache), hookpoints=["model.layers.1"])
        TrainingRun(train_cfg(tmp_path / "out", kw.pop("model", tiny_model_dir), "x", **(base | kw))).run()

    with pytest.raises(UserError, match="made with model"):
        run(model="embedded")
    with pytest.raises(UserError, match="not in activation cache"):
        run(hookpoints=["model.layers.3"])
    with pytest.raises(UserError, match="--context 64"):
        run(context=128, batch_tokens=512)
    with pytest.raises(UserError, match="not an activation cache"):
        run(from_activations=str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    m = json.loads((cache / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps(m | {"complete": False}))
    with pytest.raises(UserError, match="incomplete"):
        run(from_activations=str(bad))
    assert not (tmp_path / "out").exists()


def test_cache_and_train_commands(tmp_path, tiny_model_dir, text_corpus):
    def run(*args):  # in this process: no interpreter and torch start-up per call
        return cli(args)

    r = run(
        "cache-activations",
        "--model",
        str(tiny_model_dir),
        "--corpus",
        str(text_corpus),
        "--hookpoints",
        "model.layers.*",
        "--tokens",
        "4096",
        "--context",
        "64",
        "--batch-tokens",
        "512",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "c"),
    )
    assert r.returncode == 0, r.stderr
    assert read_manifest(tmp_path / "c")["hookpoints"] == [f"model.layers.{i}" for i in range(4)]
    r = run(
        "train",
        "--from-activations",
        str(tmp_path / "c"),
        "--model",
        str(tiny_model_dir),
        "--hookpoints",
        "model.layers.0->model.layers.1",
        "--dict-size",
        "128",
        "--k",
        "8",
        "--tokens",
        "4096",
        "--batch-tokens",
        "512",
        "--context",
        "64",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "t"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t" / "model.layers.0__to__model.layers.1-topk-k8" / "cfg.json").exists()
    r = run(
        "cache-activations",
        "--model",
        str(tiny_model_dir),
        "--corpus",
        str(text_corpus),
        "--hookpoints",
        "model.layers.1",
        "--tokens",
        "4096",
        "--context",
        "64",
        "--batch-tokens",
        "512",
        "--out",
        str(tmp_path / "c"),
    )
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_a_cut_shard_is_refused_where_it_is_read(tmp_path, cache):
    """A half-copied cache (one shard cut short) is a clear error when that shard is read, never
    vectors read past its end."""
    import shutil

    copy = tmp_path / "acts"
    shutil.copytree(cache, copy)
    m = read_manifest(copy)
    p = shard_path(copy, 1, HOOKS[0])
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    st = CachedActivationStream(copy, m, HOOKS, 64, 8, 2, m["lm_tokens"] // 64, seed=0)
    with pytest.raises(UserError, match="corrupt or truncated"):
        for _ in st.chunks():
            pass
