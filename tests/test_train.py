"""Training on a tiny random Llama: it learns, trains many SAEs per forward, resumes exactly,
and refuses bad input before doing expensive work."""

import sys

import pytest
import torch
from conftest import cli, kill_when_checkpointed, train_cfg

from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.evaluate.metrics import EvalBudget, reconstruction_metrics
from saelab.models import load_model
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import load_sae
from saelab.storage import read_json
from saelab.train.loop import TrainingDiverged, TrainingRun


def _heldout_fvu(model_dir, corpus, saes):
    lm = load_model(str(model_dir))
    rows = load_token_rows(str(corpus), lm.tokenizer, 64)
    res, _ = reconstruction_metrics(lm.model, lm.tokenizer, [(s, {}) for s in saes], rows, EvalBudget(tokens=4096))
    return [r["fvu"] for r in res]


def test_trained_saes_beat_random_and_share_one_forward(tmp_path, tiny_model_dir, text_corpus):
    cfg = train_cfg(
        tmp_path / "run", tiny_model_dir, text_corpus, k=[4, 16], hookpoints=["model.layers.*"], tokens=32768
    )
    folders = TrainingRun(cfg).run()
    assert len(folders) == 8  # 4 layers x 2 values of k, all from the same forward passes
    trained = [load_sae(f)[0] for f in folders if "layers.1-" in f.name]
    rand = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint="model.layers.1", k=16))
    fvu4, fvu16, fvu_rand = _heldout_fvu(tiny_model_dir, text_corpus, trained + [rand])
    assert fvu16 < fvu4 < 0.6 * fvu_rand
    assert fvu16 < 0.35
    manifest = read_json(tmp_path / "run" / "manifest.json")
    assert manifest["seed"] == 0 and manifest["data"]["fingerprint"] and len(manifest["saes"]) == 8
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_transcoder_learns_mlp_map(tmp_path, tiny_model_dir, text_corpus):
    site = "model.layers.1.post_attention_layernorm->model.layers.1.mlp"
    cfg = train_cfg(tmp_path / "tc", tiny_model_dir, text_corpus, hookpoints=[site], k=[16], tokens=32768)
    (folder,) = TrainingRun(cfg).run()
    tc, c = load_sae(folder)
    assert tc.cfg.is_transcoder and c["metadata"]["hook_name_out"] == "model.layers.1.mlp"
    rand = build_sae(tc.cfg)
    fvu, fvu_rand = _heldout_fvu(tiny_model_dir, text_corpus, [tc, rand])
    assert fvu < 0.5 * fvu_rand


@pytest.mark.parametrize(
    "arch,extra", [("batchtopk", {}), ("jumprelu", {"sparsity_coeff": [0.01]}), ("relu", {"sparsity_coeff": [0.05]})]
)
def test_other_architectures_learn(tmp_path, tiny_model_dir, text_corpus, arch, extra):
    cfg = train_cfg(tmp_path / arch, tiny_model_dir, text_corpus, arch=arch, tokens=32768, **extra)
    (folder,) = TrainingRun(cfg).run()
    sae, _ = load_sae(folder)
    rand = build_sae(sae.cfg)
    fvu, fvu_rand = _heldout_fvu(tiny_model_dir, text_corpus, [sae, rand])
    assert fvu < 0.6 * fvu_rand
    if arch == "batchtopk":  # the calibrated inference threshold keeps k latents per token on average
        lm = load_model(str(tiny_model_dir))
        rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
        (r,), _ = reconstruction_metrics(lm.model, lm.tokenizer, [(sae, {})], rows, EvalBudget(tokens=4096))
        assert r["l0"] == pytest.approx(8, rel=0.15)


def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir, text_corpus):
    common = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--corpus",
        str(text_corpus),
        "--hookpoints",
        "model.layers.2",
        "--dict-size",
        "256",
        "--k",
        "8",
        "--tokens",
        "16384",
        "--batch-tokens",
        "512",
        "--context",
        "64",
        "--buffer-batches",
        "4",
        "--checkpoint-every",
        "6000",
        "--lr",
        "2e-3",
        "--threads",
        "1",
    ]
    full = cli(common + ["--out", tmp_path / "full"])  # the runs not killed: in this process
    assert full.returncode == 0, full.stderr
    killed = kill_when_checkpointed(
        [sys.executable, "-m", "saelab", *common, "--out", str(tmp_path / "res")], tmp_path / "res"
    )
    assert killed == -9  # SIGKILL from outside as soon as the first checkpoint is on disk
    assert (tmp_path / "res" / "checkpoint.safetensors").exists()
    assert not list((tmp_path / "res").glob("*/cfg.json"))
    resumed = cli(common + ["--out", tmp_path / "res", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at" in resumed.stdout
    name = "model.layers.2-topk-k8"
    a, _ = load_sae(tmp_path / "full" / name)
    b, _ = load_sae(tmp_path / "res" / name)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
    # and it really trained (a run that learned nothing would also "match")
    final = {r: read_json(tmp_path / r / "manifest.json")["saes"][name]["final"] for r in ("full", "res")}
    assert final["res"]["fvu"] < 0.8
    # the smoothed statistics are checkpointed: the resumed run reports what the uninterrupted one does
    assert final["res"].keys() == final["full"].keys()
    for k in final["full"]:
        assert final["res"][k] == pytest.approx(final["full"][k], rel=1e-3, abs=1e-5), k


@pytest.mark.parametrize("loss", ["local", "e2e"])
def test_token_budget_is_a_contract(tmp_path, tiny_model_dir, text_corpus, loss):
    # 10,000 tokens in batches of 8 rows x 64 = 512 tokens: 19 whole batches = 9,728 tokens, never a
    # whole extra chunk (buffer_batches 4 = 2,048 tokens would round up to 10,240)
    cfg = train_cfg(tmp_path / loss, tiny_model_dir, text_corpus, tokens=10_000, loss=loss)
    (folder,) = TrainingRun(cfg).run()
    manifest = read_json(tmp_path / loss / "manifest.json")
    assert manifest["lm_tokens"] == 9_728 and manifest["requested_tokens"] == 10_000
    assert load_sae(folder)[1]["saelab"]["training_tokens"] == 9_728
    if loss == "e2e":
        assert manifest["steps"] == 19


def test_bad_config_fails_before_model_loads(tmp_path, monkeypatch):
    import saelab.train.sources as tr

    monkeypatch.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UserError, match="larger than the dictionary"):
        TrainingRun(train_cfg(tmp_path / "a", "x", "y", k=[300], latents=256))
    with pytest.raises(UserError, match="unknown --arch"):
        TrainingRun(train_cfg(tmp_path / "b", "x", "y", arch="magic"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already exists"):
        TrainingRun(train_cfg(tmp_path / "c", "x", "y"))
    assert (tmp_path / "c" / "keep.txt").read_text() == "precious"
    with pytest.raises(UserError, match="no checkpoint"):
        TrainingRun(train_cfg(tmp_path / "d", "x", "y", resume=True))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        TrainingRun(train_cfg(tmp_path / "e", "x", str(tmp_path / "empty.txt")))
    with pytest.raises(UserError, match="does not exist"):
        TrainingRun(train_cfg(tmp_path / "f", "x", str(tmp_path / "missing.jsonl")))


def test_too_deep_hookpoint_and_unknown_names(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.train.sources as tr

    with monkeypatch.context() as m:
        m.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(UserError, match="deeper than the model: it has 4 layers"):
            TrainingRun(train_cfg(tmp_path / "deep", tiny_model_dir, text_corpus, hookpoints=["model.layers.9"]))
    with pytest.raises(UserError, match=r"closest valid names: model\.layers\.1\.mlp"):
        TrainingRun(train_cfg(tmp_path / "typo", tiny_model_dir, text_corpus, hookpoints=["model.layers.1.mlpp"])).run()


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    from saelab.train.objectives import LocalObjective

    real_loss = LocalObjective.loss
    calls = {"n": 0}

    def poisoned(self, m, part, shared, dead):
        calls["n"] += 1
        if calls["n"] > 12:  # after the first checkpoint (8 steps per 4096-token chunk)
            part = type(part)(acts={h: a * float("nan") for h, a in part.acts.items()})
        return real_loss(self, m, part, shared, dead)

    monkeypatch.setattr(LocalObjective, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        TrainingRun(train_cfg(tmp_path / "nan", tiny_model_dir, text_corpus)).run()
    ckpt = tmp_path / "nan" / "checkpoint.safetensors"
    assert ckpt.exists()
    from saelab.storage import read_tensors

    assert all(torch.isfinite(t.float()).all() for t in read_tensors(ckpt).values())


# ---------------------------------------------------------------- what --resume compares, and what it says
def _interrupted(tmp_path, tiny_model_dir, text_corpus, monkeypatch, **kw):
    """A run stopped (as by a kill) right after its first checkpoint; returns its folder."""
    real = TrainingRun._checkpoint

    def killed(self, members, pos):
        real(self, members, pos)
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(TrainingRun, "_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, **kw)).run()
    return run


def _edit_checkpoint_meta(run, edit) -> None:
    """Rewrite the checkpoint's stored meta (what an older saelab would have written)."""
    import json

    from saelab.storage import read_tensors, write_tensors
    from saelab.train.checkpoint import CHECKPOINT, read_checkpoint_meta

    meta = read_checkpoint_meta(run)
    edit(meta)
    write_tensors(run / CHECKPOINT, read_tensors(run / CHECKPOINT), {"saelab": json.dumps(meta)})


RESUME_KW = dict(tokens=8192, checkpoint_every=2048, buffer_batches=2)


def test_resume_names_each_changed_option_before_the_model_loads(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.train.sources as tr

    run = _interrupted(tmp_path, tiny_model_dir, text_corpus, monkeypatch, **RESUME_KW)
    monkeypatch.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UserError) as e:  # --threads may change: it says how fast, not what is computed
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, lr=[1e-3], k=[16], threads=1, **RESUME_KW))
    msg = str(e.value)
    assert f"the checkpoint in {run} was written with " in msg
    assert "--lr [0.002] (now [0.001])" in msg and "--k [8] (now [16])" in msg
    assert "threads" not in msg and "start a new --out or restore those options" in msg


def test_resume_accepts_an_unrecorded_option_only_at_its_default(
    tmp_path, tiny_model_dir, text_corpus, monkeypatch, capsys
):
    """A checkpoint written before an option existed has no value for it: it resumes while that option
    is at its default (what the older saelab did), and is refused, with both values, otherwise."""
    import saelab.train.sources as tr

    run = _interrupted(tmp_path, tiny_model_dir, text_corpus, monkeypatch, **RESUME_KW)
    _edit_checkpoint_meta(run, lambda m: m["resume_identity"]["config"].pop("buffer_batches"))
    with monkeypatch.context() as m:
        m.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(
            UserError,
            match=r"written with --buffer-batches not recorded \(an older saelab: resumes "
            r"only at its default 8; now 2\); start a new --out",
        ):
            TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, **RESUME_KW))
    _edit_checkpoint_meta(run, lambda m: m["resume_identity"]["config"].update(buffer_batches=2))
    _edit_checkpoint_meta(run, lambda m: m["resume_identity"]["config"].pop("sink_norm_factor"))
    with pytest.raises(UserError, match=r"--sink-norm-factor not recorded .*default 5\.0; now 4\.0"):
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, sink_norm_factor=4.0, **RESUME_KW))
    capsys.readouterr()
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, **RESUME_KW)).run()  # the default: resumes
    assert "resuming at 2,048 tokens" in capsys.readouterr().out
    assert read_json(run / "manifest.json")["lm_tokens"] == 8192


def test_resume_of_a_checkpoint_with_only_the_old_hash(tmp_path, tiny_model_dir, text_corpus, monkeypatch, capsys):
    """Checkpoints written before the options were stored hold one hash: equal resumes, unequal gets
    the old message (the hash cannot say what differs)."""
    run = _interrupted(tmp_path, tiny_model_dir, text_corpus, monkeypatch, **RESUME_KW)
    _edit_checkpoint_meta(run, lambda m: m.pop("resume_identity"))
    with pytest.raises(UserError, match="written by a different configuration"):
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, lr=[1e-3], **RESUME_KW)).run()
    capsys.readouterr()
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, **RESUME_KW)).run()
    assert "resuming at 2,048 tokens" in capsys.readouterr().out


def test_resume_options_compare_as_json():
    """Stored options come back from JSON: a tuple equals the list it was written as; a stored option
    this saelab does not have cannot be honoured."""
    from saelab.train.config import TrainConfig
    from saelab.train.resume_identity import _json, option_differences, resume_options

    stored = _json(resume_options(TrainConfig(out="o", k=[8, 16], hookpoints=["a", "b"])))
    assert option_differences(stored, TrainConfig(out="o", k=(8, 16), hookpoints=("a", "b"))) == []
    assert option_differences(stored, TrainConfig(out="o", k=[8, 16], hookpoints=["a", "b"], device="cuda")) == []
    assert option_differences(stored | {"gone": 3}, TrainConfig(out="o", k=[8, 16], hookpoints=["a", "b"])) == [
        "--gone 3 (an option this saelab no longer has)"
    ]
    assert option_differences(stored, TrainConfig(out="o", k=[8], hookpoints=["a", "b"], model_b="m")) == [
        '--model-b none (now "m")',
        "--k [8, 16] (now [8])",
    ]
