"""A KL+MSE fine-tune chooses its tokens per step from its budget (finetune_budget.py): about 48
optimiser steps in whole --context rows, and a budget too small to move the dictionary is refused
before anything loads. The old constant default (4,096 tokens per step) gave a 13k-token fine-tune of
a 262k-token SAE 3 steps and a 1% CE cut (issue 31). Checkpoints written when the default was a
constant still resume."""

import pytest
from conftest import train_cfg

from saelab.errors import UserError
from saelab.train.config import TrainConfig
from saelab.train.finetune_budget import FINETUNE_STEPS, MIN_FINETUNE_STEPS, default_batch_tokens
from saelab.train.plan import resolve
from saelab.train.resume_identity import identity_hash, option_differences, resume_identity


def test_the_default_batch_gives_a_finetune_its_steps():
    # the case: 5% of a 262k-token baseline; and the measured 1M-token fine-tune (49k tokens at 1,024)
    assert default_batch_tokens("kl+mse", 13_107, 256) == 256  # 51 steps, not 3
    assert default_batch_tokens("kl+mse", 50_000, 256) == 1024  # 48 steps
    assert default_batch_tokens("kl+mse", 10_000_000, 256) == 4096  # never above the local default
    assert default_batch_tokens("kl+mse", 3_000, 256) == 256  # at least one row
    for loss in ("local", "e2e", "e2e+ds"):
        assert default_batch_tokens(loss, 13_107, 256) == 4096
    for tokens in (13_107, 50_000, 262_144):
        steps = tokens // default_batch_tokens("kl+mse", tokens, 256)
        assert FINETUNE_STEPS <= steps < 2 * FINETUNE_STEPS + 2


def test_a_resolved_kl_mse_run_trains_with_the_budget_batch(tmp_path, tiny_model_dir, text_corpus):
    cfg = train_cfg(tmp_path / "r", tiny_model_dir, text_corpus, loss="kl+mse", tokens=16384, batch_tokens=None)
    plan = resolve(cfg)
    assert plan.config.batch_tokens == 320  # 16,384 / 48 = 341 -> 5 rows of 64
    assert cfg.batch_tokens is None  # the user's config is not rewritten
    local = resolve(train_cfg(tmp_path / "l", tiny_model_dir, text_corpus, batch_tokens=None))
    assert local.config.batch_tokens == 4096


def test_a_budget_too_small_to_help_is_refused_before_anything_loads(tmp_path, tiny_model_dir, text_corpus, capsys):
    too_few = (MIN_FINETUNE_STEPS - 1) * 64
    with pytest.raises(UserError, match=r"optimiser step.*raise --tokens to at least 768"):
        resolve(
            train_cfg(tmp_path / "a", tiny_model_dir, text_corpus, loss="kl+mse", tokens=too_few, batch_tokens=None)
        )
    # a given --batch-tokens that leaves few steps is the user's choice: a note, and it trains that way
    plan = resolve(train_cfg(tmp_path / "b", tiny_model_dir, text_corpus, loss="kl+mse", tokens=2048, batch_tokens=512))
    assert plan.config.batch_tokens == 512
    assert "gives 4 optimiser step(s); without it the run would take 32" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # enough steps at one row each: trains
    assert resolve(train_cfg(tmp_path / "c", tiny_model_dir, text_corpus, loss="kl+mse", tokens=768, batch_tokens=None))


def test_checkpoints_from_the_constant_default_still_resume():
    """Before, --batch-tokens defaulted to 4096 and a checkpoint stored 4096 (or left it out of the
    hash as a default). Now the default is None, resolved per loss: the same run resumes."""
    now = TrainConfig(out="o", k=[8], hookpoints=["a"], batch_tokens=4096)  # the resolved plan's value
    h_now, stored_now = resume_identity(now, ["a-topk"], "data", {})
    assert stored_now["config"]["batch_tokens"] is None  # stored as the default it is
    old_stored = dict(stored_now["config"], batch_tokens=4096)  # what the previous saelab wrote
    assert option_differences(old_stored, now) == []
    h_unset, _ = resume_identity(TrainConfig(out="o", k=[8], hookpoints=["a"]), ["a-topk"], "data", {})
    assert h_unset == h_now == identity_hash(stored_now, TrainConfig)
    # a kl+mse checkpoint trained at the old 4,096 default now differs from the new default, by name
    ft = TrainConfig(out="o", k=[8], hookpoints=["a"], loss="kl+mse", tokens=50_000, batch_tokens=1024)
    old_ft = dict(resume_identity(ft, ["a-topk"], "data", {})[1]["config"], batch_tokens=4096)
    assert option_differences(old_ft, ft) == ["--batch-tokens 4096 (now none)"]
