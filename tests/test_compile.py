"""--compile: the dictionary's forward + local loss through torch.compile (inductor, C++ on this CPU)
gives the uncompiled run's weights and losses, and what it cannot do is refused before any model loads."""

import pytest
import torch
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae.folder import load_sae
from saelab.storage import read_json
from saelab.train.loop import train

# tiny on purpose: inductor compiles a few C++ kernels per graph, which dominates this test's time;
# --dead-tokens keeps AuxK off so the graphs do not change mid-run
KW = dict(
    latents=64,
    k=[4],
    tokens=2048,
    batch_tokens=512,
    context=64,
    buffer_batches=4,
    threads=1,
    dead_tokens=10**9,
    checkpoint_every=10**9,
)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_compiled_training_matches_eager(tmp_path, tiny_model_dir, text_corpus, arch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    (a,) = train(train_cfg(tmp_path / "eager", tiny_model_dir, text_corpus, arch=arch, **KW))
    assert counters["stats"]["unique_graphs"] == 0
    (b,) = train(train_cfg(tmp_path / "compiled", tiny_model_dir, text_corpus, arch=arch, compile=True, **KW))
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really captured (part of) the step
    sa, sb = load_sae(a)[0].folded_state(), load_sae(b)[0].folded_state()
    for key in sa:  # includes BatchTopK's inference threshold
        torch.testing.assert_close(sb[key], sa[key], atol=1e-5, rtol=1e-4, msg=key)
    fa = read_json(tmp_path / "eager" / "manifest.json")["saes"]
    fb = read_json(tmp_path / "compiled" / "manifest.json")["saes"]
    for name in fa:
        assert fb[name]["final"]["fvu"] == pytest.approx(fa[name]["final"]["fvu"], rel=1e-4)
        assert fb[name]["final"]["l0"] == pytest.approx(fa[name]["final"]["l0"], rel=1e-4)


def test_compile_refusals_before_the_model_loads(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--compile compiles the local objective's dictionary step; --loss e2e"):
        train_cfg(tmp_path / "o", "embedded", "builtin", compile=True, loss="e2e").validate()
    with pytest.raises(UserError, match="--compile compiles .*--finetune-fraction"):
        train_cfg(tmp_path / "o", "embedded", "builtin", compile=True, finetune_fraction=0.1).validate()
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(UserError, match="--compile on CPU needs a C\\+\\+ compiler .*tried g\\+\\+"):
        train_cfg(tmp_path / "o", "embedded", "builtin", compile=True).validate()
    train_cfg(tmp_path / "o", "embedded", "builtin").validate()  # without --compile no compiler is needed


def test_compile_refused_with_latent_sharding(monkeypatch, tmp_path):
    from saelab.train.distributed import Distributed

    monkeypatch.setenv("WORLD_SIZE", "2")  # no RANK / MASTER_ADDR: reaching the process group would crash
    with pytest.raises(UserError, match="--compile with --distributed latents is not supported"):
        Distributed(train_cfg(tmp_path / "o", "embedded", "builtin", distributed="latents", compile=True))
