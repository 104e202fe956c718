"""The latent cache holds exactly the active latents a direct forward + encode gives, skips sink
positions, survives a kill mid-run, and caches neurons in the same format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.errors import UserError
from saelab.features.cache_config import LatentCacheConfig
from saelab.features.latent_cache import LatentCache
from saelab.features.latent_cache_writer import write_latent_cache

CTX = 64


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory, tiny_model_dir, text_corpus):
    from saelab.models import collect_activations, load_model
    from saelab.sae import SaeConfig, build_sae
    from saelab.sae.folder import Provenance, save_sae
    from saelab.sinks import SinkConfig

    lm = load_model(str(tiny_model_dir))
    ids = lm.tokenizer(text_corpus.read_text()[:4000], return_tensors="pt").input_ids[:, :256]
    x = collect_activations(lm.model, ids, ["model.layers.1"])["model.layers.1"][0]  # [256, 64]
    torch.manual_seed(1)
    sae = build_sae(SaeConfig(arch="topk", d_in=64, d_sae=96, hookpoint="model.layers.1", k=6))
    with torch.no_grad():  # centred random encoder: many latents fire, none on every token
        sae.b_dec.copy_(x.mean(0))
        sae.W_enc.copy_(torch.randn(64, 96) / x.std(0).mean())
    folder = tmp_path_factory.mktemp("sae") / "tiny_sae"
    save_sae(
        sae,
        folder,
        Provenance(
            model_spec=str(tiny_model_dir),
            model_name="tiny",
            corpus=str(text_corpus),
            context=CTX,
            sink=SinkConfig(first_positions=1, mask_special=True, norm_factor=5.0),
        ),
    )
    return folder


def _build(out, sae_dir, **kw):
    args = dict(
        tokens=CTX * 20,
        batch_rows=3,
        chunk_rows=7,
        shard_size=32,
        neurons="model.layers.1.mlp.down_proj:input",
        neuron_k=4,
    )
    args.update(kw)
    return write_latent_cache(LatentCacheConfig(sae_dirs=[str(sae_dir)], out=str(out), **args), progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sae_dir):
    return LatentCache.open(_build(tmp_path_factory.mktemp("c") / "cache", sae_dir))


def _direct(cache, sae_dir, tiny_model_dir):
    """Dense latents and neuron values computed directly, [rows, ctx, d]."""
    from saelab.models import collect_activations, load_model
    from saelab.sae.folder import load_sae

    lm = load_model(str(tiny_model_dir))
    sae, _ = load_sae(sae_dir)
    ids = torch.from_numpy(np.asarray(cache.tokens, dtype=np.int64))
    acts = collect_activations(lm.model, ids, ["model.layers.1", "model.layers.1.mlp.down_proj:input"])
    dense = sae.encode_raw(acts["model.layers.1"]).to_dense().view(ids.shape[0], CTX, -1)
    neur = acts["model.layers.1.mlp.down_proj:input"]
    return dense, neur, lm


def test_records_match_direct_encoding(cache, sae_dir, tiny_model_dir):
    assert cache.sae_names == ["tiny_sae", "neurons:model.layers.1.mlp.down_proj:input"]
    assert cache.tokens.shape == (20, CTX) and cache.excluded.shape == (20, CTX)
    dense, neur, _ = _direct(cache, sae_dir, tiny_model_dir)
    excl = torch.from_numpy(np.array(cache.excluded))
    assert excl[:, 0].all()  # the sink position (first_positions=1) is excluded everywhere
    dense[excl] = 0
    counts = (dense > 0).sum((0, 1)).numpy()
    np.testing.assert_array_equal(cache.fire_counts("tiny_sae"), counts)
    np.testing.assert_allclose(cache.max_activation("tiny_sae"), dense.amax((0, 1)).numpy(), rtol=1e-5)
    assert counts.sum() > 500 and (counts > 0).sum() > 30  # the test exercises many latents
    for j in [int(counts.argmax()), 33, 95]:
        rows, pos, vals = cache.latent_records("tiny_sae", j)
        r, p = (dense[:, :, j] > 0).nonzero(as_tuple=True)
        np.testing.assert_array_equal(rows, r.numpy())
        np.testing.assert_array_equal(pos, p.numpy())
        np.testing.assert_allclose(vals, dense[r, p, j].numpy(), rtol=1e-5)
        assert not cache.excluded[rows, pos].any()
    assert cache.manifest["n_positions"] == int((~excl).sum())
    assert cache.manifest["sink"]["first_positions"] == 1


def test_neurons_are_topk_positive_values(cache, sae_dir, tiny_model_dir):
    _, neur, lm = _direct(cache, sae_dir, tiny_model_dir)
    name = "neurons:model.layers.1.mlp.down_proj:input"
    assert cache.d_sae(name) == 128 and cache.info(name)["neuron_k"] == 4
    vals, idx = neur.topk(4, dim=-1)
    dense = torch.zeros_like(neur).scatter_(-1, idx, vals).clamp_min(0)
    dense[torch.from_numpy(np.array(cache.excluded))] = 0
    np.testing.assert_array_equal(cache.fire_counts(name), (dense > 0).sum((0, 1)).numpy())
    j = int(cache.fire_counts(name).argmax())
    rows, pos, v = cache.latent_records(name, j)
    np.testing.assert_allclose(v, dense[rows, pos, j].numpy(), rtol=1e-5)
    # the neuron's decoder is the down_proj column, added at down_proj's output
    W = lm.model.model.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(cache.decoder(name)[j], W[:, j])
    assert cache.info(name)["steer_hookpoint"] == "model.layers.1.mlp.down_proj"


def test_killed_run_resumes_to_the_same_cache(tmp_path, sae_dir, cache, monkeypatch):
    import saelab.features.latent_cache_merge as mod

    real, calls = mod._write_chunk, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # third chunk of the first dictionary: chunks 0, 1 finished
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mod, "_write_chunk", dying)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _build(out, sae_dir)
    with pytest.raises(UserError, match="unfinished"):
        LatentCache.open(out)
    monkeypatch.setattr(mod, "_write_chunk", real)
    import json

    assert json.loads((out / "manifest.json").read_text())["chunks_done"] == 2
    c2 = LatentCache.open(_build(out, sae_dir))
    assert not (out / "chunks").exists()
    for name in cache.sae_names:
        np.testing.assert_array_equal(c2.fire_counts(name), cache.fire_counts(name))
        for j in range(0, cache.d_sae(name), 17):
            for a, b in zip(c2.latent_records(name, j), cache.latent_records(name, j)):
                np.testing.assert_array_equal(a, b)


def test_bad_input(tmp_path, sae_dir, cache):
    with pytest.raises(UserError, match="at least one"):
        write_latent_cache(LatentCacheConfig(sae_dirs=[], tokens=100, out=str(tmp_path / "x")))
    with pytest.raises(UserError, match="other arguments"):
        _build(cache.path, sae_dir, tokens=CTX * 10)
    with pytest.raises(UserError, match="outside"):
        cache.latent_records("tiny_sae", 96)
    with pytest.raises(UserError, match="not in cache"):
        cache.fire_counts("nope")
    with pytest.raises(UserError, match="rows"):
        _build(tmp_path / "big", sae_dir, tokens=10**9)


def test_truncated_tokens_npy_is_not_a_complete_cache(tmp_path, sae_dir, cache):
    """A cache copied half (tokens.npy cut short) is refused where it is read, and rerunning the
    command says it is damaged instead of 'already a complete cache'; --overwrite rebuilds it."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(cache.path, out)
    tokens = out / "tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[: tokens.stat().st_size - 64])
    with pytest.raises(UserError, match="tokens.npy .*corrupt or truncated"):
        LatentCache.open(out)
    with pytest.raises(UserError, match="damaged; pass --overwrite"):
        _build(out, sae_dir)
    rebuilt = LatentCache.open(_build(out, sae_dir, overwrite=True))
    np.testing.assert_array_equal(np.asarray(rebuilt.tokens), np.asarray(cache.tokens))
