"""--distributed latents (latent-sharded training): 2 gloo processes, each holding half of the
latents, give the single-process weights (AuxK on) for TopK, BatchTopK and Matryoshka, write a
checkpoint and SAE folder in the single-process layout, and resume; bad configurations are refused
before any process group or model exists."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import cli, kill_when_checkpointed, train_cfg

from saelab.errors import UserError
from saelab.sae.folder import load_sae
from saelab.storage import read_json, read_tensors

NAME = "model.layers.1-topk-k4"
# 1,024 latents with k=4 on 512-token batches: many latents stay unfired, so with --dead-tokens 512
# the AuxK term (its own global top-k over dead latents) is active from the second step on.
ARGS = [
    "--latents",
    "1024",
    "--k",
    "4",
    "--tokens",
    "8192",
    "--batch-tokens",
    "512",
    "--context",
    "64",
    "--buffer-batches",
    "4",
    "--lr",
    "2e-3",
    "--threads",
    "1",
    "--checkpoint-every",
    "4096",
    "--dead-tokens",
    "512",
    "--hookpoints",
    "model.layers.1",
    "--distributed",
    "latents",
]


def _launch(nproc):
    return (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    ) + ["-m", "saelab.cli"]


def test_two_latent_shards_match_one_process_and_resume(tmp_path, tiny_model_dir, text_corpus):
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus)] + ARGS
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = cli(args + ["--out", tmp_path / "one"])  # one process: this one
    assert r.returncode == 0, r.stderr[-3000:]
    # 2 ranks, killed after the first checkpoint, then resumed: the result must still be the 1-process one
    two = args + ["--out", str(tmp_path / "two")]
    rc = kill_when_checkpointed(_launch(2) + two, tmp_path / "two", env={"OMP_NUM_THREADS": "1"})
    assert rc != 0
    ckpt = read_tensors(tmp_path / "two" / "checkpoint.safetensors")  # gathered: the single-process layout
    assert ckpt[f"{NAME}/sae/W_enc"].shape == (64, 1024) and ckpt[f"{NAME}/since_fired"].shape == (1024,)
    assert ckpt[f"{NAME}/opt/2/exp_avg_sq"].shape == (1024, 64)  # W_dec's Adam moment, both halves
    r = subprocess.run(_launch(2) + two + ["--resume"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at 4,096 tokens" in r.stdout + r.stderr
    one, res = read_json(tmp_path / "one" / "manifest.json"), read_json(tmp_path / "two" / "manifest.json")
    assert res["distributed"] == {"world_size": 2, "mode": "latents"}
    f1, f2 = one["saes"][NAME]["final"], res["saes"][NAME]["final"]
    assert f1["aux"] > 0.01 and f1["dead"] > 0.05  # AuxK really ran
    for key in ("fvu", "aux", "l0", "dead"):  # statistics summed / averaged over the shards
        assert f2[key] == pytest.approx(f1[key], rel=1e-4, abs=1e-6), key
    sae2, _ = load_sae(tmp_path / "two" / NAME)  # one ordinary folder with all 1,024 latents
    assert sae2.cfg.d_sae == 1024 and type(sae2).__name__ == "TopKSae"
    a, b = load_sae(tmp_path / "one" / NAME)[0].folded_state(), sae2.folded_state()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=2e-4, msg=k)


def _run(nproc, args, out, env):
    if nproc == 1:  # one process: this one
        r = cli(args + ["--out", out])
    else:
        r = subprocess.run(_launch(nproc) + args + ["--out", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


class _Stop(Exception):
    pass


def _stop_after_first_checkpoint(args) -> None:
    """`saelab ARGS` in this process, stopped by an exception right after its first checkpoint is on disk."""
    import saelab.train.loop as loop

    save = loop.save_checkpoint

    def save_then_stop(*a, **kw):
        save(*a, **kw)
        raise _Stop

    loop.save_checkpoint = save_then_stop
    try:
        with pytest.raises(_Stop):
            cli(args)
    finally:
        loop.save_checkpoint = save


def test_batchtopk_shards_match_one_process_at_the_checkpoint(tmp_path, tiny_model_dir, text_corpus):
    """BatchTopK: the global (k x rows)-th largest value from per-rank candidates; after 8 steps (the
    first checkpoint, gathered from 2 ranks) weights, Adam moments and the running inference threshold
    equal one process's."""
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus), "--arch", "batchtopk"] + ARGS
    name = NAME.replace("topk", "batchtopk")
    ckpts = []
    for nproc in (1, 2):
        out = tmp_path / str(nproc)
        if nproc == 1:  # one process (this one), stopped once its first checkpoint is written
            _stop_after_first_checkpoint(args + ["--out", out])
        else:
            rc = kill_when_checkpointed(_launch(nproc) + args + ["--out", str(out)], out, env={"OMP_NUM_THREADS": "1"})
            assert rc != 0
        assert not list(out.glob("*/cfg.json"))  # stopped before the end
        ckpts.append(read_tensors(tmp_path / str(nproc) / "checkpoint.safetensors"))
    one, two = ckpts
    assert set(one) == set(two)
    assert int(one[f"{name}/sae/threshold_steps"]) == 8 and float(one[f"{name}/sae/threshold"]) > 0
    assert int(two[f"{name}/sae/threshold_steps"]) == 8
    for key in one:
        if one[key].is_floating_point():
            torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=2e-4, msg=key)
        else:
            assert torch.equal(two[key], one[key]), key


def test_matryoshka_shards_match_one_process(tmp_path, tiny_model_dir, text_corpus):
    """Matryoshka (BatchTopK selection, prefix losses over groups that straddle the ranks): the final
    folder of 2 processes, including the inference threshold set at the end, is one process's."""
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus), "--arch", "matryoshka"] + ARGS
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run(1, args, tmp_path / "one", env)
    _run(2, args, tmp_path / "two", env)
    name = NAME.replace("topk", "matryoshka")
    f1 = read_json(tmp_path / "one" / "manifest.json")["saes"][name]["final"]
    f2 = read_json(tmp_path / "two" / "manifest.json")["saes"][name]["final"]
    assert f1["arch_loss"] > 0.1 and f1["aux"] > 0.01  # the prefix losses and AuxK really ran
    for key in ("fvu", "arch_loss", "aux", "l0", "dead"):
        assert f2[key] == pytest.approx(f1[key], rel=1e-4, abs=1e-6), key
    sae2, _ = load_sae(tmp_path / "two" / name)
    assert type(sae2).__name__ == "MatryoshkaSae" and sae2.cfg.groups == [256, 256, 512]
    a, b = load_sae(tmp_path / "one" / name)[0].folded_state(), sae2.folded_state()
    assert float(a["threshold"][0]) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=2e-4, msg=k)


def test_latent_sharding_refuses_before_any_process_group(monkeypatch, tmp_path):
    from saelab.train.distributed import Distributed

    monkeypatch.setenv("WORLD_SIZE", "3")  # no RANK / MASTER_ADDR: reaching the process group would crash
    cfg = train_cfg(tmp_path / "o", "embedded", "builtin", latents=1000, distributed="latents")
    with pytest.raises(
        UserError,
        match="--dict-size 1000 is not divisible by the 3 processes; use a multiple of 3 "
        r"\(e.g. 1002\)",
    ):
        Distributed(cfg)
    with pytest.raises(UserError, match="--arch relu is not supported .*supported: topk, batchtopk, matryoshka"):
        Distributed(
            train_cfg(tmp_path / "o", "embedded", "builtin", distributed="latents", arch="relu", sparsity_coeff=[1.0])
        )


def test_torchrun_refuses_dictionaries_it_cannot_train_exactly(monkeypatch, tmp_path):
    """Gated in data mode (its L1 term does not split by target variance) and crosscoder (one site per
    SAE in the distributed stream) are refused before any process group forms, with the way out named."""
    from saelab.train.distributed import Distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--arch gated: --distributed data would not give.*--distributed modules"):
        Distributed(
            train_cfg(tmp_path / "o", "embedded", "builtin", distributed="data", arch="gated", sparsity_coeff=[0.01])
        )
    with pytest.raises(UserError, match="--arch crosscoder trains in one process"):
        Distributed(
            train_cfg(
                tmp_path / "o",
                "embedded",
                "builtin",
                distributed="data",
                arch="crosscoder",
                hookpoints=["model.layers.{4,6}"],
            )
        )
