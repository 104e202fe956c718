"""The family matrix: every supported causal-LM family, as a tiny random model built from its
transformers config (vocab 49152 so the embedded tokenizer fits; no download), goes through
hookpoints (kinds, widths, what each kind means), the truncated forward, an exact splice (KL 0,
also through the e2e shared-prefix pass), a short e2e training, the latent cache and steering."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers as T
from conftest import train_cfg
from test_eval import exact_sae
from view_helpers import make_sae_folder

from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.features.cache_config import LatentCacheConfig
from saelab.features.latent_cache import LatentCache
from saelab.features.latent_cache_writer import write_latent_cache
from saelab.features.steer import FeatureEdit, FeatureSteer, encode_prompt, generate, steering_context
from saelab.models import (
    candidate_hookpoints,
    collect_activations,
    decoder_layers,
    hookpoint_widths,
    load_model,
    module_at,
)
from saelab.sae.folder import load_sae
from saelab.sae.splice import spliced
from saelab.sinks import SinkConfig, excluded_positions
from saelab.train.e2e_forward import clean_pass, plan_site
from saelab.train.loop import TrainingRun
from saelab.train.objectives import e2e_loss

V, D, MLP = 49152, 64, 96
_LLAMA_LIKE = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=MLP,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=True,
)
FAMILIES = {  # name -> (config, model class)
    "gpt2": lambda: (
        T.GPT2Config(
            vocab_size=V, n_embd=D, n_layer=3, n_head=4, n_positions=256, n_inner=MLP, bos_token_id=1, eos_token_id=2
        ),
        T.GPT2LMHeadModel,
    ),
    "gpt_neox": lambda: (
        T.GPTNeoXConfig(
            vocab_size=V,
            hidden_size=D,
            intermediate_size=MLP,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
        ),
        T.GPTNeoXForCausalLM,
    ),
    "gemma2": lambda: (
        T.Gemma2Config(
            **_LLAMA_LIKE, head_dim=16, sliding_window=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0
        ),
        T.Gemma2ForCausalLM,
    ),
    "gemma3": lambda: (
        T.Gemma3TextConfig(**_LLAMA_LIKE, head_dim=16, sliding_window=8, final_logit_softcapping=30.0),
        T.Gemma3ForCausalLM,
    ),
    "qwen2": lambda: (T.Qwen2Config(**_LLAMA_LIKE), T.Qwen2ForCausalLM),
    "qwen3": lambda: (T.Qwen3Config(**_LLAMA_LIKE, head_dim=16), T.Qwen3ForCausalLM),
    "mistral": lambda: (T.MistralConfig(**_LLAMA_LIKE, sliding_window=8), T.MistralForCausalLM),
    "llama": lambda: (T.LlamaConfig(**_LLAMA_LIKE), T.LlamaForCausalLM),
}
# the sub-module of block 1 expected for each kind (None: the family has no such site)
SANDWICH = {
    "attn_out_prenorm": "self_attn",
    "attn_out": "post_attention_layernorm",
    "mlp_in": "pre_feedforward_layernorm",
    "mlp_neurons": "mlp.down_proj:input",
    "mlp_out_prenorm": "mlp",
    "mlp_out": "post_feedforward_layernorm",
    "resid_post": "",
}
LLAMA_KINDS = {
    "attn_out": "self_attn",
    "mlp_in": "post_attention_layernorm",
    "mlp_neurons": "mlp.down_proj:input",
    "mlp_out": "mlp",
    "resid_post": "",
}
EXPECTED = {
    "gpt2": (
        "transformer.h",
        {"attn_out": "attn", "mlp_in": "ln_2", "mlp_neurons": "mlp.c_proj:input", "mlp_out": "mlp", "resid_post": ""},
    ),
    "gpt_neox": (
        "gpt_neox.layers",
        {
            "attn_out": "attention",
            "mlp_in": "post_attention_layernorm",
            "mlp_neurons": "mlp.dense_4h_to_h:input",
            "mlp_out": "mlp",
            "resid_post": "",
        },
    ),
    "gemma2": ("model.layers", SANDWICH),
    "gemma3": ("model.layers", SANDWICH),
    **{f: ("model.layers", LLAMA_KINDS) for f in ("qwen2", "qwen3", "mistral", "llama")},
}


def _site(fam: str, kind: str) -> str:
    prefix, kinds = EXPECTED[fam]
    return f"{prefix}.1.{kinds[kind]}".replace(".:", ":").rstrip(".")


def build_family(folder, family: str, embedded_folder):
    cfg, cls = FAMILIES[family]()
    torch.manual_seed(0)
    cls(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tmp_path_factory, embedded_folder, text_corpus):
    folder = build_family(tmp_path_factory.mktemp(request.param) / "model", request.param, embedded_folder)
    lm = load_model(str(folder))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    ids = torch.from_numpy(np.asarray(rows.tokens[rows.train_rows[:2]], dtype=np.int64))[:, :24]
    return request.param, folder, lm, ids


def test_hookpoint_kinds_widths_and_meaning(fam):
    family, _, lm, ids = fam
    prefix, kinds = EXPECTED[family]
    assert decoder_layers(lm.model)[0] == prefix
    sites = candidate_hookpoints(lm.model)
    block1 = [(n, k) for n, k in sites if n == f"{prefix}.1" or n.startswith(f"{prefix}.1.")]
    assert block1 == [(_site(family, k), k) for k in kinds]  # every kind, in forward order
    widths = hookpoint_widths(lm.model, [n for n, _ in block1])
    assert widths == {n: (MLP if k == "mlp_neurons" else D) for n, k in block1}
    # what the kinds mean: block 1 adds attn_out + mlp_out to the residual stream; the MLP reads mlp_in
    acts = collect_activations(lm.model, ids, [f"{prefix}.0"] + [n for n, _ in block1])
    seen = {}
    h = module_at(lm.model, f"{prefix}.1.mlp").register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    try:
        lm.model(input_ids=ids)
    finally:
        h.remove()
    a = {k: acts[_site(family, k)] for k in kinds}
    torch.testing.assert_close(
        a["resid_post"], acts[f"{prefix}.0"] + a["attn_out"] + a["mlp_out"], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(a["mlp_in"], seen["x"])


def test_forward_stops_at_the_deepest_hook(fam):
    family, _, lm, ids = fam
    prefix, _ = EXPECTED[family]
    _, layers = decoder_layers(lm.model)
    ran = []
    h = layers[2].register_forward_hook(lambda *a: ran.append(2))
    try:
        acts = collect_activations(lm.model, ids, [f"{prefix}.1", _site(family, "mlp_out")])
    finally:
        h.remove()
    assert ran == []
    full = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(acts[f"{prefix}.1"], full)


@pytest.mark.parametrize("kind", ["resid_post", "mlp_out", "mlp_neurons"])
def test_exact_reconstruction_spliced_costs_zero_kl(fam, kind):
    family, _, lm, ids = fam
    site = _site(family, kind)
    d = hookpoint_widths(lm.model, [site])[site]
    clean = lm.model(input_ids=ids).logits.float().log_softmax(-1)
    with spliced(lm.model, exact_sae(d, site)):
        logp = lm.model(input_ids=ids).logits.float().log_softmax(-1)
    assert (clean.exp() * (clean - logp)).sum(-1).max() < 1e-6
    # the e2e pass (blocks before the site replaced by stubs, soft-capped head) agrees
    plan = plan_site(lm.model, site)
    cp = clean_pass(lm.model, ids, [site], [plan], set(plan.later))
    torch.testing.assert_close(cp.logp, clean, atol=1e-5, rtol=1e-5)
    drop = excluded_positions([cp.acts[site]], ids, SinkConfig(), [1, 2])
    _, stats, _ = e2e_loss(lm.model, exact_sae(d, site), cp, plan, drop, plan.later, 0.5, 1.0)
    assert stats["kl"] < 1e-6 and stats["ds_mse"] < 1e-8
    rand = exact_sae(d, site)
    with torch.no_grad():
        rand.W_dec.mul_(0.5)
    _, stats, _ = e2e_loss(lm.model, rand, cp, plan, drop, plan.later, 0.5, 1.0)
    assert stats["kl"] > 1e-6  # a wrong dictionary does change the output


def test_short_e2e_training(fam, tmp_path, text_corpus):
    family, folder, _, _ = fam
    site = _site(family, "resid_post")
    cfg = train_cfg(
        tmp_path / "run",
        folder,
        text_corpus,
        hookpoints=[site],
        loss="e2e",
        latents=128,
        k=[8],
        tokens=1024,
        batch_tokens=512,
        lr=[1e-2],
        checkpoint_every=10**9,
    )
    (out,) = TrainingRun(cfg).run()
    sae, cj = load_sae(out)
    assert cj["saelab"]["loss"] == "e2e" and sae.cfg.hookpoint == site
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    kl = [r["saes"][out.name]["kl"] for r in log]
    assert len(kl) == 2 and all(np.isfinite(kl)) and kl[-1] > 0


def test_latent_cache_and_neurons(fam, tmp_path, text_corpus):
    family, folder, lm, _ = fam
    prefix, _ = EXPECTED[family]
    sae_dir = make_sae_folder(tmp_path / "sae", folder, text_corpus, hookpoint=f"{prefix}.1")
    neurons = _site(family, "mlp_neurons")
    cache = LatentCache.open(
        write_latent_cache(
            LatentCacheConfig(
                sae_dirs=[str(sae_dir)],
                out=str(tmp_path / "cache"),
                tokens=64 * 4,
                batch_rows=2,
                chunk_rows=4,
                shard_size=64,
                neurons=neurons,
                neuron_k=4,
            ),
            progress=False,
        )
    )
    ids = torch.from_numpy(np.asarray(cache.tokens, dtype=np.int64))
    acts = collect_activations(lm.model, ids, [f"{prefix}.1"])[f"{prefix}.1"]
    sae, _ = load_sae(sae_dir)
    dense = sae.encode_raw(acts).to_dense().view(*ids.shape, -1)
    dense[torch.from_numpy(np.array(cache.excluded))] = 0
    np.testing.assert_array_equal(cache.fire_counts("sae"), (dense > 0).sum((0, 1)).numpy())
    j = int(cache.fire_counts("sae").argmax())
    rows, pos, vals = cache.latent_records("sae", j)
    np.testing.assert_allclose(vals, dense[rows, pos, j].numpy(), rtol=1e-5)
    # a neuron's decoder is what it adds at the projection's output (GPT-2's Conv1D included)
    name = f"neurons:{neurons}"
    n = int(cache.fire_counts(name).argmax())
    proj = module_at(lm.model, neurons)
    unit = torch.zeros(1, 1, MLP)
    unit[..., n] = 1.0
    torch.testing.assert_close(cache.decoder(name)[n], (proj(unit) - proj(torch.zeros_like(unit)))[0, 0])


def test_steering_is_exact_without_edit_and_kv_cached(fam, tmp_path, text_corpus):
    family, folder, lm, _ = fam
    prefix, _ = EXPECTED[family]
    sae, _ = load_sae(make_sae_folder(tmp_path / "sae", folder, text_corpus, hookpoint=f"{prefix}.1"))
    ids = encode_prompt(lm.tokenizer, "The quick brown fox jumps over the lazy dog because")
    clean = lm.model(input_ids=ids).logits
    with spliced(lm.model, sae, error_term=True, edit=lambda d: d):
        assert torch.equal(clean, lm.model(input_ids=ids).logits)
    steer = FeatureSteer([FeatureEdit(3, "clamp", 40.0)])
    ctx = steering_context(lm.model, sae, steer)
    new = generate(lm.model, lm.tokenizer, ids, 6, context=ctx, reset=steer.reset)
    assert new != generate(lm.model, lm.tokenizer, ids, 6)
    steer.reset()
    with ctx():  # the whole sequence in one steered forward predicts every KV-cached token
        logits = lm.model(input_ids=torch.tensor([ids[0].tolist() + new[:-1]]), use_cache=False).logits[0]
    assert logits[ids.shape[1] - 1 :].argmax(-1).tolist() == new


def test_unsupported_families_are_named(tmp_path, embedded_folder):
    t5 = tmp_path / "t5"  # an encoder-decoder: AutoModelForCausalLM has no class for it
    T.T5ForConditionalGeneration(
        T.T5Config(vocab_size=V, d_model=D, d_ff=MLP, num_layers=1, num_heads=4, d_kv=16)
    ).save_pretrained(t5)
    with pytest.raises(UserError, match="is a t5 model: not a causal language model"):
        load_model(str(t5))
    flat = torch.nn.Sequential(torch.nn.Linear(4, 4))
    flat.config = T.PretrainedConfig()
    with pytest.raises(UserError, match="Sequential: could not find"):
        decoder_layers(flat)


# ---------------------------------------------------------------- precision (--dtype, --store-dtype)


def test_half_precision_model_with_float32_dictionary(tiny_model_dir, text_corpus, tmp_path):
    from saelab.activations.disk_cache import CacheConfig, write_cache
    from saelab.evaluate.run import EvalConfig, evaluate

    lm32, lm16 = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir), dtype="bfloat16")
    assert next(lm16.model.parameters()).dtype == torch.bfloat16
    ids = torch.randint(3, 1000, (2, 16))
    a32 = collect_activations(lm32.model, ids, ["model.layers.1"])["model.layers.1"]
    a16 = collect_activations(lm16.model, ids, ["model.layers.1"])["model.layers.1"]
    assert a16.dtype == torch.bfloat16 and ((a16.float() - a32).norm() / a32.norm()) < 0.05
    # an exact dictionary (float32) spliced into the bfloat16 model leaves its logits bitwise unchanged
    clean = lm16.model(input_ids=ids).logits
    with spliced(lm16.model, exact_sae(D, "model.layers.1")):
        assert torch.equal(lm16.model(input_ids=ids).logits, clean)
    # training (local and e2e) with the model in bfloat16 keeps the dictionary in float32
    for loss in ("local", "e2e"):
        cfg = train_cfg(
            tmp_path / loss,
            tiny_model_dir,
            text_corpus,
            loss=loss,
            dtype="bfloat16",
            tokens=1024,
            checkpoint_every=10**9,
        )
        (folder,) = TrainingRun(cfg).run()
        sae, _ = load_sae(folder)
        assert sae.W_enc.dtype == torch.float32 and torch.isfinite(sae.W_enc).all()
    m32, m16 = (
        evaluate(
            EvalConfig(sae_dirs=[str(folder)], tokens=1024, ce_tokens=256, dtype=dt, out=str(tmp_path / f"{dt}.json")),
            quiet=True,
        )[0]
        for dt in ("float32", "bfloat16")
    )
    assert abs(m16["fvu"] - m32["fvu"]) < 0.05 and np.isfinite(m16["ce_increase"])
    # the activation cache stores half-precision vectors in half the bytes and reads them back as float32
    sizes = {}
    for store in ("float32", "float16", "bfloat16"):
        out = write_cache(
            CacheConfig(
                out=str(tmp_path / f"acts_{store}"),
                hookpoints=["model.layers.1"],
                model=str(tiny_model_dir),
                corpus=str(text_corpus),
                tokens=1024,
                context=64,
                batch_tokens=512,
                dtype="bfloat16",
                store_dtype=store,
            )
        )
        sizes[store] = sum(p.stat().st_size for p in out.glob("shard_*.npy"))
        cfg = train_cfg(
            tmp_path / f"from_{store}",
            tiny_model_dir,
            text_corpus,
            from_activations=str(out),
            tokens=1024,
            checkpoint_every=10**9,
        )
        assert load_sae(TrainingRun(cfg).run()[0])[0].W_enc.isfinite().all()
    assert sizes["float16"] == sizes["bfloat16"] < 0.52 * sizes["float32"]
    # steering from the command line with the model in bfloat16
    from saelab.cli import main

    sae_dir = make_sae_folder(tmp_path / "sae", tiny_model_dir, text_corpus)
    assert (
        main(
            [
                "steer",
                str(sae_dir),
                "--prompt",
                "Hello",
                "--clamp",
                "3=20",
                "--max-new-tokens",
                "3",
                "--dtype",
                "bfloat16",
                "--json",
                str(tmp_path / "steer.json"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "steer.json").read_text())["results"][0]
    assert res["unsteered"] != res["sweep"][0]["text"]


def test_stored_vectors_round_trip_at_their_precision():
    from saelab.activations.disk_cache import from_stored, to_stored

    x = torch.randn(50, 8) * 100
    for store, t in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        back = from_stored(to_stored(x, store), store)
        assert back.dtype == torch.float32 and torch.equal(back, x.to(t).float())


def test_bad_precision_is_refused_before_the_model_loads(tmp_path, monkeypatch, tiny_model_dir, text_corpus):
    from saelab.activations.disk_cache import CacheConfig
    from saelab.cli import main
    from saelab.option_checks import check_dtype

    with pytest.raises(UserError, match="unknown --dtype 'float64'"):
        train_cfg(tmp_path / "r", "no-such-model", text_corpus, dtype="float64").validate()
    with pytest.raises(UserError, match="unknown --store-dtype 'int8'"):
        CacheConfig(out=str(tmp_path / "c"), hookpoints=["model.layers.1"], store_dtype="int8").validate()
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(["eval", str(tmp_path), "--dtype", "float8"])

    def no_half(self, *a, **k):  # a device without float16 kernels
        if self.dtype == torch.float16:
            raise RuntimeError("\"softmax_lastdim_kernel_impl\" not implemented for 'Half'")
        return torch.Tensor.softmax.__wrapped__(self, *a, **k)

    real = torch.Tensor.softmax
    no_half.__wrapped__ = real
    monkeypatch.setattr(torch.Tensor, "softmax", no_half)
    with pytest.raises(UserError, match="--dtype float16 does not run on cpu"):
        check_dtype("float16", "cpu")
    loads = []
    monkeypatch.setattr("saelab.models._check_causal", lambda *a: loads.append(a))
    with pytest.raises(UserError, match="float16 does not run"):
        load_model(str(tiny_model_dir), dtype="float16")
    assert loads == []  # refused before anything was read
