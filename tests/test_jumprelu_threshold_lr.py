"""--jumprelu-threshold-lr: the thresholds get their own learning rate (a multiple of --lr) through
the one training loop, the rest of the dictionary trains exactly as before, and resume is exact."""

import pytest
import torch
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae.folder import load_sae
from saelab.train.loop import TrainingRun

ONE_STEP = dict(
    arch="jumprelu",
    sparsity_coeff=[0.01],
    tokens=512,
    batch_tokens=512,
    warmup_fraction=0.0,
    decay_fraction=0.0,
    lr=[2e-3],
)


def _trained(tmp_path, tiny_model_dir, text_corpus, name, **kw):
    (folder,) = TrainingRun(train_cfg(tmp_path / name, tiny_model_dir, text_corpus, **(ONE_STEP | kw))).run()
    sae, _ = load_sae(folder)
    return sae


def test_thresholds_move_by_the_multiple_and_nothing_else_changes(tmp_path, tiny_model_dir, text_corpus):
    """After one Adam step every parameter with a gradient moves by exactly its lr (Adam's first step
    is lr x sign(g)): the log-thresholds by 3 x 2e-3 instead of 2e-3, the encoder identically."""
    one = _trained(tmp_path, tiny_model_dir, text_corpus, "one")
    three = _trained(tmp_path, tiny_model_dir, text_corpus, "three", jumprelu_threshold_lr=3.0)
    assert three.cfg.jumprelu_threshold_lr == 3.0 and one.cfg.jumprelu_threshold_lr == 1.0
    torch.testing.assert_close(three.W_enc, one.W_enc)
    torch.testing.assert_close(three.W_dec, one.W_dec)
    # log theta_3 - log theta_1 = (3 - 1) x lr x sign(g) where the threshold had a gradient, else 0
    diff = three.log_threshold.detach() - one.log_threshold.detach()
    moved = diff.abs() > 1e-6
    assert moved.float().mean() > 0.2, moved.float().mean()
    torch.testing.assert_close(diff[moved].abs(), torch.full_like(diff[moved], 2 * 2e-3), rtol=1e-3, atol=1e-6)


def test_resume_with_a_threshold_rate_is_exact(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    kw = dict(tokens=4096, checkpoint_every=2048, buffer_batches=2, jumprelu_threshold_lr=10.0)
    full = _trained(tmp_path, tiny_model_dir, text_corpus, "full", **kw)
    real = TrainingRun._checkpoint

    def killed(self, members, pos):
        real(self, members, pos)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(TrainingRun, "_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            _trained(tmp_path, tiny_model_dir, text_corpus, "res", **kw)
    resumed = _trained(tmp_path, tiny_model_dir, text_corpus, "res", resume=True, **kw)
    for (n, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    assert (full.log_threshold - full.log_threshold.mean()).abs().max() > 0.05  # the thresholds did move


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(arch="topk", k=[8], sparsity_coeff=[0.0]), "applies to --arch jumprelu only"),
        (dict(jumprelu_threshold_lr=0.0), "positive multiple"),
    ],
)
def test_bad_threshold_rate_is_refused_before_the_model_loads(tmp_path, kw, msg):
    cfg = train_cfg(
        tmp_path / "r", "no-such-model", "no-such-corpus", **(ONE_STEP | {"jumprelu_threshold_lr": 2.0} | kw)
    )
    with pytest.raises(UserError, match=msg):
        cfg.validate()
