"""--init-from and the KL+MSE fine-tune on a tiny random Llama: the loss is KL + lambda * FVU as
computed by hand (sinks kept clean), a copied dictionary gives its source's outputs before step 1,
a short fine-tune lowers the KL, a resumed fine-tune equals an uninterrupted one, bad input fails
before any model loads."""

import numpy as np
import pytest
import torch
from conftest import train_cfg

from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.models import collect_activations, load_model, patch_activation
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, load_sae, open_sae, save_sae
from saelab.sae.foreign_saelens import export_saelens
from saelab.sinks import SinkConfig, excluded_positions
from saelab.storage import read_json, write_json
from saelab.train.finetune import KlMseObjective
from saelab.train.init_from import adopt_dictionary, first_batch, members_from_dictionary
from saelab.train.loop import TrainingRun
from saelab.train.members import build_members
from saelab.train.sources import Batch

SITE = "model.layers.1"


@pytest.fixture(scope="module")
def setup(tiny_model_dir, text_corpus):
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    ids = torch.from_numpy(np.asarray(rows.tokens[rows.heldout_rows[:4]], dtype=np.int64))
    return lm, rows, ids


def _hand_kl(lm, sae, ids, drop):
    """KL(clean || spliced) per token through a plain hooked forward, and the site's FVU (scaled space)."""
    model = lm.model
    with torch.no_grad():
        clean = model(input_ids=ids).logits.float().log_softmax(-1)
    keep, got = ~drop, {}

    def fn(act):
        x = act[keep]
        got["target"] = x * sae.out_scale
        got["recon"] = sae(x).recon
        return act.index_put((keep,), got["recon"] / sae.out_scale)

    with patch_activation(model, SITE, fn):
        logp = model(input_ids=ids).logits.float().log_softmax(-1)
    kl = (clean.exp() * (clean - logp)).sum() / ids.numel()
    t = got["target"]
    fvu = (got["recon"] - t).pow(2).sum() / (t - t.mean(0)).pow(2).sum()
    return kl, fvu


def test_kl_mse_loss_is_kl_plus_balanced_fvu(tmp_path, setup, tiny_model_dir, text_corpus):
    lm, _, ids = setup
    cfg = train_cfg(tmp_path / "r", tiny_model_dir, text_corpus, loss="kl+mse", k=[4])
    [m] = build_members(cfg, [(SITE, None)], {SITE: 64})
    sink = SinkConfig(cfg.sink_first_positions, cfg.mask_special, cfg.sink_norm_factor)
    obj = KlMseObjective(cfg, lm.model, [m], sink, [1, 2])
    part = Batch(ids=ids)
    shared = obj.shared(part)
    x, y = obj.io(m, part, shared)
    m.sae.init_from_data(x, y)
    drop = excluded_positions([shared.clean.acts[SITE]], ids, sink, [1, 2])
    assert drop[:, 0].all()  # the first position is a sink: kept clean, not reconstructed
    kl, fvu = _hand_kl(lm, m.sae, ids, drop)
    assert kl.item() > 1e-4 and fvu.item() > 0.1
    # first step: no running KL yet, lambda = this part's KL / FVU, so the loss is 2 KL
    r = obj.loss(m, part, shared, torch.zeros(256, dtype=torch.bool))
    assert r.stats["kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert r.stats["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    assert r.loss.item() == pytest.approx(2 * kl.item(), rel=1e-4)
    # later steps: lambda = running KL / running FVU (what the checkpoint keeps)
    m.stats = {"kl": 0.3, "fvu": 0.6}
    r = obj.loss(m, part, shared, torch.zeros(256, dtype=torch.bool))
    assert r.stats["mse_weight"] == pytest.approx(0.5)
    assert r.loss.item() == pytest.approx(kl.item() + 0.5 * fvu.item(), rel=1e-4)
    r.loss.backward()
    assert m.sae.W_enc.grad.abs().sum() > 0 and all(p.grad is None for p in lm.model.parameters())
    # --kl-coeff weighs the KL against the balanced MSE term (default 1 for kl+mse, not e2e's 0.5)
    assert obj.kl_coeff == 1.0 and obj.record()["kl_coeff"] == 1.0
    cfg2 = train_cfg(tmp_path / "r2", tiny_model_dir, text_corpus, loss="kl+mse", k=[4], kl_coeff=2.0)
    r2 = KlMseObjective(cfg2, lm.model, [m], sink, [1, 2]).loss(m, part, shared, torch.zeros(256, dtype=torch.bool))
    assert r2.loss.item() == pytest.approx(2 * kl.item() + 0.5 * fvu.item(), rel=1e-4)


def _source(folder, arch, hook=SITE, out=None, skip=False, **kw):
    """A random dictionary trained-looking enough: scales != 1, so its folder holds folded weights."""
    d_out = 64
    sae = build_sae(
        SaeConfig(arch, d_in=64, d_sae=128, hookpoint=hook, out_hookpoint=out, d_out=d_out, skip=skip, **kw)
    )
    g = torch.Generator().manual_seed(1)
    sae.reset_parameters(g)
    x = torch.randn(512, 64, generator=g) * 7
    sae.init_from_data(x, x * 3 if out else x)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        if arch == "relu":  # a free decoder: unequal row norms
            sae.W_dec.mul_(torch.rand(128, 1, generator=g) + 0.5)
    return save_sae(sae, folder, Provenance(model_spec="MODEL", model_name="m", corpus="c", context=64))


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("topk", {"k": 8}),
        ("batchtopk", {"k": 8}),
        ("jumprelu", {"sparsity_coeff": 0.1}),
        ("relu", {"sparsity_coeff": 0.1}),
        ("topk-skip-transcoder", {"k": 8}),
        ("topk-saelens", {"k": 8}),
        ("relu-saelens", {"sparsity_coeff": 0}),
    ],
)
def test_init_from_reproduces_the_source_before_step_one(tmp_path, tiny_model_dir, text_corpus, arch, kw):
    tc = arch.endswith("transcoder")
    src = _source(tmp_path / "src", arch.split("-")[0], out="model.layers.2" if tc else None, skip=tc, **kw)
    cfg = read_json(src / "cfg.json")
    cfg["saelab"]["model_spec"] = str(tiny_model_dir)
    write_json(src / "cfg.json", cfg)
    if arch.endswith("saelens"):  # a foreign folder: read through the importer
        src = export_saelens(load_sae(src)[0], tmp_path / "lens", "tiny", 64, "c")
    run = train_cfg(
        tmp_path / "r",
        tiny_model_dir,
        text_corpus,
        init_from=str(src),
        latents=4608,
        k=[32],
        hookpoints=["model.layers.6"],
    )
    init, run = adopt_dictionary(run)  # a new config: the user's is not rewritten
    assert (run.arch, run.latents, run.skip) == (arch.split("-")[0], 128, tc) and init.fmt == (
        "saelens" if arch.endswith("saelens") else "saelab"
    )
    assert run.hookpoints == [SITE + ("->model.layers.2" if tc else "")]
    [m] = members_from_dictionary(
        run, init, [(SITE, "model.layers.2" if tc else None)], {SITE: 64, "model.layers.2": 64}
    )
    source, _ = load_sae(src)
    x = torch.randn(300, 64) * 7
    first_batch(m.sae, x)
    assert m.sae.in_scale.item() != 1.0  # the training parametrisation is restored, not the folded one
    if m.sae.uses_unit_norm_decoder:
        torch.testing.assert_close(m.sae.W_dec.norm(dim=1), torch.ones(128), rtol=1e-5, atol=0)
    m.sae.eval()
    assert torch.equal(m.sae.encode_raw(x).indices, source.encode_raw(x).indices)
    torch.testing.assert_close(m.sae.reconstruct(x), source.reconstruct(x), rtol=1e-5, atol=1e-5)
    for name, t in source.folded_state().items():  # and it saves back to the same folder contents
        torch.testing.assert_close(m.sae.folded_state()[name], t, rtol=1e-5, atol=1e-6, msg=name)


def _kl(lm, sae, ids):
    acts = collect_activations(lm.model, ids, [SITE])[SITE]
    drop = excluded_positions([acts], ids, SinkConfig(), [1, 2])
    with torch.no_grad():
        return _hand_kl(lm, sae, ids, drop)[0].item()


def test_short_finetune_lowers_kl_and_records_its_source(tmp_path, setup, tiny_model_dir, text_corpus):
    lm, rows, _ = setup
    ids = torch.from_numpy(np.asarray(rows.tokens[rows.heldout_rows[:8]], dtype=np.int64))
    TrainingRun(train_cfg(tmp_path / "local", tiny_model_dir, text_corpus, tokens=4096, k=[4], latents=128)).run()
    src = tmp_path / "local" / f"{SITE}-topk-k4"
    # the dictionary's options come from the folder: the defaults given here are replaced, not refused
    [out] = TrainingRun(
        train_cfg(
            tmp_path / "ft",
            tiny_model_dir,
            text_corpus,
            init_from=str(src),
            loss="kl+mse",
            tokens=1024,
            batch_tokens=64,  # 16 steps of one row: a kl+mse run refuses fewer than 12 (finetune_budget.py)
            lr=[1e-2],
            k=[32],
            latents=4608,
            hookpoints=["model.layers.6"],
        )
    ).run()
    before, after = open_sae(src).sae, open_sae(out).sae
    assert (after.cfg.k, after.cfg.d_sae, after.cfg.hookpoint) == (4, 128, SITE)  # k unchanged
    kl0, kl1 = _kl(lm, before, ids), _kl(lm, after, ids)
    assert kl1 < 0.9 * kl0, (kl0, kl1)  # measured 0.0116 -> 0.0092 on these 8 held-out rows
    rec = read_json(out / "cfg.json")["saelab"]
    assert rec["init_from"]["path"] == str(src.resolve()) and rec["init_from"]["training_tokens"] == 4096
    assert rec["loss"] == "kl+mse" and rec["train_stats"]["mse_weight"] > 0


def test_resume_across_and_inside_the_finetune_is_exact(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.train.loop as loop

    # 8 steps of 256 tokens: 4 local (one chunk), then 4 kl+mse; checkpoints at 1024 (the switch), 1536, 2048
    kw = dict(k=[4], latents=128, tokens=2048, batch_tokens=256, lr=[3e-3], checkpoint_every=512, finetune_fraction=0.5)
    (full,) = TrainingRun(train_cfg(tmp_path / "full", tiny_model_dir, text_corpus, **kw)).run()

    class Killed(Exception):
        pass

    real = loop.TrainingRun._checkpoint
    seen = []

    def checkpoint_then_die(self, members, pos):  # a crash right after a checkpoint
        real(self, members, pos)
        seen.append((pos.lm_tokens, dict(members[0].stats)))
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(loop.TrainingRun, "_checkpoint", checkpoint_then_die)
        for resume in (False, True):  # killed at the switch, then inside the fine-tune
            with pytest.raises(Killed):
                TrainingRun(train_cfg(tmp_path / "res", tiny_model_dir, text_corpus, resume=resume, **kw)).run()
    assert [t for t, _ in seen] == [1024, 1536]
    assert "kl" not in seen[0][1] and "kl" in seen[1][1]  # before the switch: local; after: kl+mse
    (res,) = TrainingRun(train_cfg(tmp_path / "res", tiny_model_dir, text_corpus, resume=True, **kw)).run()
    a, b = load_sae(full)[0], load_sae(res)[0]
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
    final = {r: read_json(tmp_path / r / "manifest.json")["saes"][full.name]["final"] for r in ("full", "res")}
    assert final["full"]["mse_weight"] > 0 and final["full"]["kl"] > 0
    for k in final["full"]:  # the running KL / FVU (lambda) continue exactly
        assert final["res"][k] == pytest.approx(final["full"][k], rel=1e-4, abs=1e-7), k
    rec = read_json(full / "cfg.json")["saelab"]
    assert rec["loss"] == "local" and rec["finetune"] == "kl+mse" and rec["finetune_fraction"] == 0.5


def test_bad_input_fails_before_the_model_loads(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.train.sources as sources
    from saelab.storage import write_tensors

    monkeypatch.setattr(sources, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    src = _source(tmp_path / "src", "topk", k=8)

    def run(**kw):
        base = (
            dict(latents=4608, k=[32], hookpoints=["model.layers.6"]) if "init_from" in kw else {}
        )  # the defaults: taken from the dictionary
        TrainingRun(train_cfg(tmp_path / "r", tiny_model_dir, text_corpus, **(base | kw)))

    with pytest.raises(UserError, match="between 0 and 1"):
        run(finetune_fraction=1.0)
    with pytest.raises(UserError, match="does not combine with --loss e2e"):
        run(finetune_fraction=0.05, loss="e2e")
    with pytest.raises(UserError, match="activation cache"):
        run(finetune_fraction=0.05, from_activations=str(tmp_path))
    with pytest.raises(UserError, match="a --loss local run has none"):
        run(kl_coeff=2.0)
    with pytest.raises(UserError, match="--k 16 contradicts"):
        run(init_from=str(src), k=[16])
    with pytest.raises(UserError, match="sweep of several"):
        run(init_from=str(src), k=[8, 16])
    with pytest.raises(UserError, match="--gated-init-fire sets how a new dictionary starts"):
        run(init_from=str(src), gated_init_fire=0.01)
    with pytest.raises(UserError, match="--hookpoints model.layers.2 contradicts"):
        run(init_from=str(src), hookpoints=["model.layers.2"])
    with pytest.raises(UserError, match="--model .* contradicts"):  # a saelab folder names its model
        run(init_from=str(src))
    narrow = build_sae(SaeConfig("topk", d_in=32, d_sae=64, hookpoint=SITE, k=4))
    save_sae(narrow, tmp_path / "many" / "narrow", Provenance(model_spec=str(tiny_model_dir), context=64))
    with pytest.raises(UserError, match="width at model.layers.1 is 32.*hidden size 64"):
        run(init_from=str(tmp_path / "many" / "narrow"))
    _source(tmp_path / "many" / "other", "topk", k=8)
    with pytest.raises(UserError, match="holds 2 SAE folders"):
        run(init_from=str(tmp_path / "many"))
    lens = tmp_path / "lens"
    lens.mkdir()
    write_json(
        lens / "cfg.json", {"architecture": "weird", "d_in": 64, "d_sae": 64, "hook_name": "blocks.1.hook_resid_post"}
    )
    write_tensors(lens / "sae_weights.safetensors", {"W_enc": torch.zeros(64, 64)})
    with pytest.raises(UserError, match="not supported"):
        run(init_from=str(lens))


def test_the_finetune_phase_starts_a_fresh_adam_at_a_tenth_of_the_rate(
    tmp_path, tiny_model_dir, text_corpus, monkeypatch
):
    """--finetune-fraction trains its phase as --init-from ... --loss kl+mse would. With the local
    phase's Adam moments carried over (FVU-scale second moments) and its decayed ~1e-3 rate, a 1M-token
    layer-6 run's KL and FVU rose at every fine-tune step (docs/E2E.md)."""
    import saelab.train.loop as loop

    seen = []
    real = loop.TrainingRun._optimise

    def record(self, m, *a, **k):
        real(self, m, *a, **k)
        p = next(iter(m.opt.state.values()))
        seen.append((m.opt.param_groups[0]["lr"], int(p["step"]), "kl" in m.stats))

    monkeypatch.setattr(loop.TrainingRun, "_optimise", record)
    kw = dict(
        k=[4],
        latents=128,
        tokens=2048,
        batch_tokens=256,
        lr=[3e-3],
        checkpoint_every=10**9,
        finetune_fraction=0.5,
        warmup_fraction=0.0,
        decay_fraction=0.5,
    )
    TrainingRun(train_cfg(tmp_path / "r", tiny_model_dir, text_corpus, **kw)).run()
    local = [s for s in seen if not s[2]]
    tune = [s for s in seen if s[2]]
    assert len(local) == 4 and len(tune) == 4
    assert [s[1] for s in local] == [1, 2, 3, 4] and [s[1] for s in tune] == [1, 2, 3, 4]  # fresh moments
    # the local phase runs the run's schedule (decay over the last half of the budget starts at the switch),
    # the fine-tune its own at a tenth: full at its start, decaying to 0 over its own second half
    assert local[-1][0] == pytest.approx(3e-3)
    # (progress before each batch: phase 0, 1/4, 1/2, 3/4 -> factor 1, 1, 1, 1/2)
    assert [s[0] for s in tune] == pytest.approx([3e-4, 3e-4, 3e-4, 1.5e-4])
