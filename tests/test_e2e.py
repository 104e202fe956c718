"""End-to-end losses on a tiny random Llama: an exact dictionary costs nothing, the shared-prefix
forward gives the same loss and gradients as a plain spliced forward, gradients never reach the
model, e2e training lowers the KL, and bad sites fail before training."""

import math

import numpy as np
import pytest
import torch
from conftest import train_cfg
from test_eval import exact_sae

from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.evaluate.later_layers import later_layer_fvu
from saelab.evaluate.metrics import EvalBudget, evaluate
from saelab.models import collect_activations, load_model
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import load_sae
from saelab.sinks import SinkConfig, excluded_positions
from saelab.train.e2e_forward import clean_pass, plan_site, spliced_pass
from saelab.train.loop import TrainingRun
from saelab.train.objectives import e2e_loss


@pytest.fixture(scope="module")
def setup(tiny_model_dir, text_corpus):
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    ids = torch.from_numpy(np.asarray(rows.tokens[rows.train_rows[:4]], dtype=np.int64))
    return lm, rows, ids


def _clean(lm, ids, site, ds=(2, 3)):
    plan = plan_site(lm.model, site)
    clean = clean_pass(lm.model, ids, [site], [plan], set(ds))
    drop = excluded_positions([clean.acts[site]], ids, SinkConfig(), [1, 2])
    return plan, clean, drop


@pytest.mark.parametrize(
    "site,ds",
    [("model.layers.1", (2, 3)), ("model.layers.1.mlp", (1, 2, 3)), ("model.layers.2.mlp.down_proj:input", (2, 3))],
)
def test_exact_dictionary_costs_zero_kl_and_zero_downstream(setup, site, ds):
    lm, _, ids = setup
    plan, clean, drop = _clean(lm, ids, site, ds)
    assert plan.later == ds
    d = clean.acts[site].shape[-1]
    loss, s, _ = e2e_loss(lm.model, exact_sae(d, site), clean, plan, drop, ds, 0.5, 2.5)
    assert s["kl"] < 1e-6 and s["ds_mse"] < 1e-8 and s["fvu"] < 1e-6 and abs(loss.item()) < 1e-5
    rand = build_sae(SaeConfig("topk", d_in=d, d_sae=4 * d, hookpoint=site, k=4))
    _, s2, _ = e2e_loss(lm.model, rand, clean, plan, drop, ds, 0.5, 2.5)
    assert s2["kl"] > 1e-5 and s2["ds_mse"] > 1e-6  # a random dictionary does change the model


def _reference_loss(lm, sae, ids, drop, site, ds):
    """The same loss through a plain full forward with the SAE spliced by hooks (no prefix sharing)."""
    model = lm.model
    with torch.no_grad():
        clean_logits = model(input_ids=ids).logits.float().log_softmax(-1)
        clean_later = collect_activations(model, ids, [f"model.layers.{j}" for j in ds])
    later, handles = {}, []
    for j in ds:
        handles.append(
            model.model.layers[j].register_forward_hook(
                lambda m, a, o, j=j: later.__setitem__(j, o[0] if isinstance(o, tuple) else o)
            )
        )
    keep = ~drop
    out = {}

    def fn(act):
        x = act[keep]
        rec = sae(x).recon / sae.out_scale
        out["r"] = rec
        return act.index_put((keep,), rec)

    from saelab.models import patch_activation

    with patch_activation(model, site, fn):
        logp = model(input_ids=ids).logits.float().log_softmax(-1)
    for h in handles:
        h.remove()
    kl = (clean_logits.exp() * (clean_logits - logp)).sum() / ids.numel()
    mse = sum(torch.nn.functional.mse_loss(later[j][keep], clean_later[f"model.layers.{j}"][keep]) for j in ds) / len(
        ds
    )
    return 0.5 * kl + 2.5 * mse


@pytest.mark.parametrize("recompute", [False, True])
def test_shared_prefix_matches_plain_forward_and_grads_reach_only_the_sae(setup, recompute):
    lm, _, ids = setup
    site, ds = "model.layers.1", (2, 3)
    plan, clean, drop = _clean(lm, ids, site, ds)
    torch.manual_seed(0)
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint=site, k=8))
    sae.init_from_data(clean.acts[site][~drop], clean.acts[site][~drop])
    loss, s, _ = e2e_loss(lm.model, sae, clean, plan, drop, ds, 0.5, 2.5, recompute=recompute)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    assert all(p.grad is None for p in lm.model.parameters())
    assert all(g.abs().sum() > 0 for n, g in ours.items()), {n: float(g.abs().sum()) for n, g in ours.items()}
    sae.zero_grad(set_to_none=True)
    ref = _reference_loss(lm, sae, ids, drop, site, ds)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    ref.backward()
    for n, p in sae.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-3, atol=1e-6, msg=n)
    assert all(p.grad is None for p in lm.model.parameters())


def test_sink_positions_stay_clean(setup):
    """A dictionary that outputs garbage still leaves position 0 (a sink) exactly clean downstream."""
    lm, _, ids = setup
    site = "model.layers.1"
    plan, clean, drop = _clean(lm, ids, site)
    assert drop[:, 0].all()
    rep = clean.acts[site].clone()
    rep[~drop] = 100.0
    hidden, later = spliced_pass(lm.model, clean, plan, rep)
    torch.testing.assert_close(later[3][:, 0], clean.later[3][:, 0])
    assert (later[3][:, 1:] - clean.later[3][:, 1:]).abs().max() > 1


def test_e2e_training_lowers_kl_and_records_the_loss(tmp_path, setup, tiny_model_dir, text_corpus):
    lm, rows, _ = setup
    cfg = train_cfg(
        tmp_path / "e2e",
        tiny_model_dir,
        text_corpus,
        loss="e2e",
        k=[16],
        latents=128,
        tokens=8192,
        batch_tokens=512,
        lr=[1e-2],
        checkpoint_every=10**9,
    )
    (folder,) = TrainingRun(cfg).run()
    trained, cj = load_sae(folder)
    assert cj["saelab"]["loss"] == "e2e" and cj["saelab"]["kl_coeff"] == 0.5
    # the same SAE before training: same seed and init, scales from data
    base = build_sae(trained.cfg)
    base.reset_parameters(torch.Generator().manual_seed(0))
    x = collect_activations(
        lm.model, torch.from_numpy(np.asarray(rows.tokens[rows.train_rows[:8]], dtype=np.int64)), ["model.layers.1"]
    )["model.layers.1"][:, 1:].reshape(-1, 64)
    base.init_from_data(x, x)
    base.eval()
    after, before = evaluate(
        lm.model, lm.tokenizer, [(trained, cj), (base, cj)], rows, EvalBudget(tokens=1024, ce_tokens=1024)
    )
    assert after["kl"] < 0.7 * before["kl"], (after["kl"], before["kl"])  # measured: 0.57x after 16 steps
    assert after["l0"] == pytest.approx(16, abs=0.01)
    # the training curve: one line per optimiser step, the smoothed KL falls
    import json

    log = [json.loads(line) for line in (tmp_path / "e2e" / "train_log.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in log] == list(range(1, 17)) and log[-1]["tokens"] == 8192
    kl = [r["saes"][folder.name]["kl"] for r in log]
    assert kl[-1] < kl[0]
    png = (tmp_path / "e2e" / "train_curves.png").read_bytes()  # drawn from that log at the end of training
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_e2e_ds_trains_and_later_layer_fvu_is_reported(tmp_path, setup, tiny_model_dir, text_corpus):
    lm, rows, _ = setup
    cfg = train_cfg(
        tmp_path / "ds",
        tiny_model_dir,
        text_corpus,
        loss="e2e+ds",
        k=[4, 16],
        latents=128,
        tokens=4096,
        batch_tokens=512,
        lr=[3e-3],
        downstream_layers=[2, 3],
        e2e_micro_rows=3,
    )
    folders = TrainingRun(cfg).run()
    assert len(folders) == 2  # two SAEs trained from one clean pass per batch
    saes = [load_sae(f) for f in folders]
    assert saes[0][1]["saelab"]["downstream_layers"] == ["model.layers.2", "model.layers.3"]
    exact = exact_sae(64, "model.layers.1")
    res = later_layer_fvu(lm.model, lm.tokenizer, saes + [(exact, {})], rows, EvalBudget(ce_tokens=512))
    assert list(res[0]) == ["model.layers.2", "model.layers.3"]
    assert all(v < 1e-6 for v in res[2].values())
    assert all(0 < v < 2 for r in res[:2] for v in r.values())
    assert all(math.isfinite(r["model.layers.3"]) for r in res)


def test_e2e_resume_gives_the_same_weights(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.train.loop as loop

    kw = dict(loss="e2e", k=[4], latents=128, tokens=4096, batch_tokens=512, lr=[3e-3], checkpoint_every=2048)
    (full,) = TrainingRun(train_cfg(tmp_path / "full", tiny_model_dir, text_corpus, **kw)).run()

    class Killed(Exception):
        pass

    def die():
        raise Killed

    real = loop.TrainingRun._checkpoint

    def checkpoint_then_die(self, members, pos):  # a crash right after the first checkpoint
        real(self, members, pos)
        die()

    with monkeypatch.context() as m:
        m.setattr(loop.TrainingRun, "_checkpoint", checkpoint_then_die)
        with pytest.raises(Killed):
            TrainingRun(train_cfg(tmp_path / "res", tiny_model_dir, text_corpus, **kw)).run()
    (res,) = TrainingRun(train_cfg(tmp_path / "res", tiny_model_dir, text_corpus, resume=True, **kw)).run()
    a, b = load_sae(full)[0], load_sae(res)[0]
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_bad_e2e_input_fails_before_training(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.train.sources as tr

    with monkeypatch.context() as m:
        m.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(UserError, match="unknown --loss"):
            TrainingRun(train_cfg(tmp_path / "a", "x", "y", loss="e3e"))
        with pytest.raises(UserError, match="only applies to --loss e2e\\+ds"):
            TrainingRun(train_cfg(tmp_path / "b", "x", "y", loss="e2e", downstream_layers=[2]))
    import saelab.train.objectives as e2e

    monkeypatch.setattr(e2e, "e2e_loss", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(UserError, match="has no later layers"):
        TrainingRun(
            train_cfg(tmp_path / "c", tiny_model_dir, text_corpus, loss="e2e", hookpoints=["model.layers.3"])
        ).run()
    with pytest.raises(UserError, match="block 0 is not after hookpoint 'model.layers.1'"):
        TrainingRun(train_cfg(tmp_path / "d", tiny_model_dir, text_corpus, loss="e2e+ds", downstream_layers=[0])).run()
    with pytest.raises(UserError, match="the model has 4 blocks"):
        TrainingRun(
            train_cfg(tmp_path / "e", tiny_model_dir, text_corpus, loss="e2e+ds", downstream_layers=[2, 7])
        ).run()


@pytest.mark.parametrize("cap", [0.0, 5.0])
def test_fused_head_kl_equals_autograd_and_keeps_no_logits(cap):
    """The KL head (gradient computed chunk by chunk in the forward) gives autograd's value and gradient,
    with and without soft-capping, and keeps no [positions, vocab] tensor for backward."""
    from types import SimpleNamespace

    from saelab.train.e2e_forward import kl_to_clean

    torch.manual_seed(0)
    n, d, v = 37, 16, 301
    head = torch.nn.Linear(d, v, bias=True).requires_grad_(False)
    model_mod = torch.nn.Module()  # a causal LM's shape: a base model, an output head, a config
    model_mod.model, model_mod.lm_head = torch.nn.Module(), head
    model_mod.config = SimpleNamespace(final_logit_softcapping=cap)
    model_mod.get_output_embeddings = lambda: head
    h = (3 * torch.randn(2, n, d)).requires_grad_()
    clean = (2 * torch.randn(2, n, v)).log_softmax(-1)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        ours = kl_to_clean(model_mod, h, clean, chunk=10)
    assert shapes and all(s[-1] != v for s in shapes), shapes
    (g_ours,) = torch.autograd.grad(3 * ours, h)
    z = head(h)
    z = torch.tanh(z / cap) * cap if cap else z
    ref = (clean.exp() * (clean - z.log_softmax(-1))).sum()
    (g_ref,) = torch.autograd.grad(3 * ref, h)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, embedded_folder):
    """The tiny Llama with larger random weights (init std 0.3): next-token entropy ~7.9 nats instead
    of ~10.7 (uniform is 10.8), so splicing an SAE in changes the output measurably."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("peaked-llama")
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


def test_e2e_beats_local_on_kl_at_the_same_budget(tmp_path, peaked_model_dir, text_corpus):
    """The point of e2e: at the same k, tokens and (default) learning rate it reaches a lower held-out KL
    than local training, which never sees the KL (docs/research/e2e.md, "Why e2e lost on KL")."""
    kw = dict(k=[8], latents=256, tokens=8192, batch_tokens=512, lr=None, checkpoint_every=10**9, threads=1)
    (local,) = TrainingRun(train_cfg(tmp_path / "local", peaked_model_dir, text_corpus, **kw)).run()
    (e2e,) = TrainingRun(train_cfg(tmp_path / "e2e", peaked_model_dir, text_corpus, loss="e2e", **kw)).run()
    lm = load_model(str(peaked_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    m_local, m_e2e = evaluate(
        lm.model, lm.tokenizer, [load_sae(local), load_sae(e2e)], rows, EvalBudget(tokens=2048, ce_tokens=2048)
    )
    assert m_e2e["kl"] < 0.92 * m_local["kl"], (m_e2e["kl"], m_local["kl"])
    assert m_e2e["fvu"] > m_local["fvu"]  # e2e does not reconstruct its input as well: it optimises the output
