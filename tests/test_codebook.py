"""Codebook features (docs/DICTIONARIES.md): planted codes are recovered, the type trains through the
one loop (local and e2e), goes through eval, the latent cache and steering, saves exactly and
refuses what it cannot do."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, load_sae, save_sae
from saelab.sae.foreign_saelens import export_saelens
from saelab.sae.foreign_sparsify import export_sparsify
from saelab.train.members import new_member
from saelab.train.objectives import LocalObjective
from saelab.train.sources import Batch

D, N, K = 32, 48, 3


def planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that are sums of K of N fixed unit codes (uniformly chosen, no magnitudes), and the codes."""
    codes = F.normalize(torch.randn(N, D, generator=torch.Generator().manual_seed(7)), dim=1)
    idx = torch.rand(n, N, generator=torch.Generator().manual_seed(seed)).argsort(1)[:, :K]
    return codes[idx].sum(1), codes


def fvu(pred, x) -> float:
    return ((pred - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def train_local(sae, x, steps=200, rows=256, lr=2e-2, dead_after=2048):
    """The local objective as the loop runs it (Adam; dead codes get the auxiliary pull)."""
    m, obj = new_member("t", sae, lr), LocalObjective()
    sae.init_from_data(x[:2048], x[:2048])
    since = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for s in range(steps):
        r = obj.loss(m, Batch(acts={"h": x[(s * rows) % (len(x) - rows) :][:rows]}), None, since >= dead_after)
        r.loss.backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        since += rows
        since[r.fired] = 0
    return sae.eval()


def test_codebook_recovers_planted_codes():
    x, codes = planted(30_000, 0)
    held, _ = planted(4096, 1)
    torch.manual_seed(0)
    cfg = SaeConfig("codebook", d_in=D, d_sae=N, hookpoint="h", k=K)
    sae = train_local(build_sae(cfg), x)
    rand = build_sae(cfg)
    rand.init_from_data(x[:2048], x[:2048])
    best = (codes @ F.normalize(sae.W_dec / sae.out_scale, dim=1).t()).max(1).values  # each true code's best match
    # measured: 46 of 48 codes found at cosine > 0.9, held-out FVU 0.11 vs 1.11 for a random codebook
    assert (best > 0.9).sum() >= 40, best
    f, f_rand = fvu(sae.reconstruct(held), held), fvu(rand.reconstruct(held), held)
    assert f < 0.25 and f < 0.3 * f_rand, (f, f_rand)
    lat = sae.encode_raw(held)
    assert torch.equal(lat.values, torch.ones(len(held), K)) and lat.l0_per_row().eq(K).all()
    # the output is exactly the bias plus the sum of the chosen codes
    torch.testing.assert_close(
        sae.reconstruct(held[:5]), (sae.b_dec + sae.W_dec[lat.indices[:5]].sum(1)) / sae.out_scale
    )


def test_codebook_selection_is_cosine_top_k_and_gradient_reaches_only_chosen_codes():
    torch.manual_seed(1)
    sae = build_sae(SaeConfig("codebook", d_in=8, d_sae=20, hookpoint="h", k=2))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.W_dec.mul_(torch.rand(20, 1) * 5)  # norms differ: selection must ignore them
    x = torch.randn(6, 8)
    cos = F.normalize(x - sae.b_dec, dim=1) @ F.normalize(sae.W_dec, dim=1).t()
    lat, _, _ = sae.encode(x)
    assert torch.equal(lat.indices.sort(1).values, cos.topk(2, dim=1).indices.sort(1).values)
    out = sae(x, target=x)
    out.recon.pow(2).sum().backward()
    touched = sae.W_dec.grad.abs().sum(1) > 0
    assert torch.equal(touched, torch.zeros(20, dtype=torch.bool).index_fill(0, lat.indices.unique(), True))


def test_codebook_save_load_is_exact_and_export_is_refused(tmp_path):
    x, _ = planted(4096, 0)
    sae = build_sae(SaeConfig("codebook", d_in=D, d_sae=N, hookpoint="model.layers.1", k=K))
    sae.init_from_data(x, x)  # non-unit scales, to be folded into the saved weights
    folder = save_sae(sae, tmp_path / "cb", Provenance(model_spec="m", model_name="m", context=64))
    back, cfg = load_sae(folder)
    assert cfg["architecture"] == "codebook" and cfg["saelab"]["config"]["k"] == K
    assert torch.equal(back.encode_raw(x).indices.sort(1).values, sae.encode_raw(x).indices.sort(1).values)
    torch.testing.assert_close(back.reconstruct(x), sae.reconstruct(x), rtol=1e-6, atol=1e-6)
    again = save_sae(back, tmp_path / "cb2", Provenance(model_spec="m", model_name="m", context=64))
    from saelab.storage import read_tensors

    a, b = read_tensors(folder / "sae_weights.safetensors"), read_tensors(again / "sae_weights.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)  # the second save is bit-identical
    with pytest.raises(UserError, match="SAELens has no codebook"):
        export_saelens(back, tmp_path / "sl")
    with pytest.raises(UserError, match="sparsify has no codebook"):
        export_sparsify(back, tmp_path / "sp")


def test_codebook_bad_input_refused_before_model_loads(tmp_path):
    for kw, msg in [
        (dict(k=[300]), "larger than the dictionary"),
        (dict(hookpoints=["model.layers.1->model.layers.2"]), "transcoder sites"),
        (dict(sparsity_coeff=[0.1]), "does not apply to --arch codebook"),
        (dict(groups=[128, 128]), "--groups applies to --arch matryoshka only"),
    ]:
        with pytest.raises(UserError, match=msg):
            train_cfg(tmp_path / "r", "no-such-model", "no-such-corpus", arch="codebook", **kw).validate()
    with pytest.raises(ValueError, match="between 1 and the codebook size"):
        build_sae(SaeConfig("codebook", d_in=8, d_sae=4, hookpoint="h", k=5))


def test_codebook_trains_in_the_loop_and_works_downstream(tmp_path, tiny_model_dir, text_corpus):
    from saelab.data import load_token_rows
    from saelab.evaluate.metrics import EvalBudget, reconstruction_metrics
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache import LatentCache
    from saelab.features.latent_cache_writer import write_latent_cache
    from saelab.features.steer import FeatureEdit, FeatureSteer, encode_prompt
    from saelab.models import load_model
    from saelab.sae.splice import spliced
    from saelab.train.loop import TrainingRun

    cfg = train_cfg(tmp_path / "cb", tiny_model_dir, text_corpus, arch="codebook", k=[8], tokens=8192, lr=[1e-2])
    (folder,) = TrainingRun(cfg).run()
    sae, _ = load_sae(folder)
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    rand = build_sae(sae.cfg)
    (r, rr), _ = reconstruction_metrics(lm.model, lm.tokenizer, [(sae, {}), (rand, {})], rows, EvalBudget(tokens=2048))
    assert r["fvu"] < 0.7 * rr["fvu"] and r["l0"] == pytest.approx(8), (r.fvu, r.l0, rr.fvu)
    cache = LatentCache.open(
        write_latent_cache(
            LatentCacheConfig(
                sae_dirs=[str(folder)],
                tokens=64 * 8,
                out=str(tmp_path / "cache"),
                batch_rows=4,
                chunk_rows=8,
                shard_size=64,
            ),
            progress=False,
        )
    )
    (name,) = cache.sae_names
    total = int(cache.fire_counts(name).sum())
    assert total > 0 and total % 8 == 0  # every cached position holds exactly k = 8 codes
    # steering: activating code j adds exactly its vector at every position after the sink
    ids = encode_prompt(lm.tokenizer, "The quick brown fox jumps over the lazy dog")
    got = {}
    h = lm.model.model.layers[2].register_forward_pre_hook(lambda m, a: got.setdefault(len(got), a[0].clone()))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
            with spliced(lm.model, sae, error_term=True, edit=FeatureSteer([FeatureEdit(3, "add", 1.0)], skip_first=1)):
                lm.model(input_ids=ids)
    finally:
        h.remove()
    delta = (got[1] - got[0])[0]
    assert torch.equal(delta[0], torch.zeros_like(delta[0]))
    torch.testing.assert_close(delta[1:], sae.W_dec[3].expand(ids.shape[1] - 1, -1), atol=1e-5, rtol=1e-4)


def test_codebook_trains_end_to_end(tmp_path, tiny_model_dir, text_corpus):
    from saelab.train.loop import TrainingRun

    cfg = train_cfg(
        tmp_path / "e2e",
        tiny_model_dir,
        text_corpus,
        arch="codebook",
        loss="e2e",
        k=[8],
        latents=128,
        tokens=2048,
        batch_tokens=512,
        lr=[1e-2],
        checkpoint_every=10**9,
    )
    (folder,) = TrainingRun(cfg).run()
    sae, cj = load_sae(folder)
    assert cj["saelab"]["loss"] == "e2e" and sae.cfg.arch == "codebook"
    log = [json.loads(line) for line in (tmp_path / "e2e" / "train_log.jsonl").read_text().splitlines()]
    kl = [rec["saes"][folder.name]["kl"] for rec in log]
    assert kl[-1] < kl[0], kl  # the smoothed KL falls over 4 steps
