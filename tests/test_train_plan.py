"""`resolve(config) -> plan`: the run's setup worked out once; the user's config is never rewritten,
and each check runs once, on the values it is about (after --init-from's adoption)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.train.config import TrainConfig
from saelab.train.plan import resolve


def test_init_from_is_adopted_into_the_plan_not_into_the_users_config(tmp_path, tiny_model_dir, monkeypatch):
    sae = build_sae(SaeConfig("matryoshka", d_in=64, d_sae=256, hookpoint="model.layers.1", k=8, groups=[64, 192]))
    src = save_sae(sae, tmp_path / "src", Provenance(model_spec=str(tiny_model_dir), context=64))
    cfg = train_cfg(tmp_path / "r", tiny_model_dir, "corpus", init_from=str(src))
    before = copy.deepcopy(cfg)
    calls = {"run": 0, "dictionary": 0}
    for name in calls:
        method = getattr(TrainConfig, f"check_{name}")
        monkeypatch.setattr(
            TrainConfig,
            f"check_{name}",
            lambda self, _m=method, _n=name: (calls.__setitem__(_n, calls[_n] + 1), _m(self))[1],
        )
    plan = resolve(cfg)
    assert cfg == before  # nothing rewritten in place
    assert calls == {"run": 1, "dictionary": 1}  # each half checked once
    assert (plan.config.arch, plan.config.groups, plan.kind.__name__) == ("matryoshka", [64, 192], "MatryoshkaSae")
    assert plan.patterns == (("model.layers.1", None),) and plan.sweep == ((8, 0.0, 2e-3),)
    assert plan.init is not None and plan.init.fmt == "saelab"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.objective = "e2e"
    # the dictionary's rules run on the adopted values: a matryoshka option against a topk dictionary
    topk = save_sae(
        build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint="model.layers.1", k=8)),
        tmp_path / "t",
        Provenance(model_spec=str(tiny_model_dir), context=64),
    )
    with pytest.raises(UserError, match="--groups applies to --arch matryoshka only, not topk"):
        resolve(train_cfg(tmp_path / "r", tiny_model_dir, "corpus", init_from=str(topk), groups=[128, 128]))
