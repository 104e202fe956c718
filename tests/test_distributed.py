"""torchrun with 2 gloo processes on the tiny model: data-parallel and module-parallel training give
the single-process weights, a killed job resumes distributed, a resume with another world size is
refused, and a rank that dies ends the job with a clear message instead of a hang."""

import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import cli, descendants, kill_when_checkpointed

from saelab.sae.folder import load_sae

COMMON = [
    "--dict-size",
    "256",
    "--k",
    "8",
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
    "1000000000",
]


def _launcher(nproc):
    return (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "saelab.cli"]
        if nproc > 1
        else [sys.executable, "-m", "saelab.cli"]
    )


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The worker process of `rank` among the launcher's descendants (its environment says RANK=r)."""
    for pid in descendants(launcher_pid):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and f"LOCAL_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no worker of rank {rank} found")


def _run(args, nproc=1, env=None, timeout=400):
    return subprocess.run(
        _launcher(nproc) + args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _weights(folder):
    return load_sae(folder)[0].folded_state()


@pytest.fixture(scope="module")
def base(tiny_model_dir, text_corpus):
    return ["train", "--model", str(tiny_model_dir), "--corpus", str(text_corpus)] + COMMON


BOTH = ["--hookpoints", "model.layers.1", "model.layers.2"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, base):
    """The one-process reference (in this process: the same code as `python -m saelab.cli`, no start-up)."""
    out = tmp_path_factory.mktemp("single") / "run"
    r = cli(base + BOTH + ["--out", out])
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory, base):
    """A 2-process data-parallel run of both SAEs: compared with one process, and the uninterrupted reference
    of the killed-and-resumed 2-process run."""
    out = tmp_path_factory.mktemp("dp") / "run"
    r = _run(base + BOTH + ["--out", str(out)], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _compare(a, b, atol):
    for name in ("model.layers.1-topk-k8", "model.layers.2-topk-k8"):
        wa, wb = _weights(a / name), _weights(b / name)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], atol=atol, rtol=atol, msg=f"{name}/{k}")


def test_data_parallel_matches_single_process(single, data_parallel):
    out = data_parallel
    _compare(single, out, atol=2e-4)
    from saelab.storage import read_json

    m = read_json(out / "manifest.json")
    assert m["distributed"] == {"world_size": 2, "mode": "data"} and m["lm_tokens"] == 8192
    assert len(m["saes"]) == 2


def test_module_parallel_matches_single_process(tmp_path, base, single):
    out = tmp_path / "mp"
    r = _run(
        base + BOTH + ["--distributed", "modules", "--out", str(out)],
        nproc=2,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _compare(single, out, atol=1e-5)


def test_killed_distributed_run_resumes_and_world_size_is_checked(tmp_path, base, data_parallel):
    killed = base + BOTH + ["--out", str(tmp_path / "res")]
    rc = kill_when_checkpointed(_launcher(2) + killed, tmp_path / "res", env={"OMP_NUM_THREADS": "1"})
    assert rc != 0 and (tmp_path / "res" / "checkpoint.safetensors").exists()
    r = cli(killed + ["--resume"])  # one process (this one: the same check as a 1-process launch)
    assert r.returncode == 2 and "written by 2 processes" in r.stderr and "--nproc_per_node" in r.stderr
    r = _run(killed + ["--resume", "--distributed", "modules"], nproc=2)
    assert r.returncode != 0 and "--nproc_per_node" in r.stderr
    r = _run(killed + ["--resume"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    _compare(data_parallel, tmp_path / "res", atol=1e-6)  # the uninterrupted 2-process run, both SAEs


def _continue_once_told_to_stop(pid: int, timeout: float = 120) -> None:
    """Once torchrun has sent the frozen rank its SIGTERM (pending: a stopped process cannot act on it),
    let it run so the SIGTERM ends it now, instead of after torchrun's fixed 30 s grace and SIGKILL. The
    job's end is still torchrun's doing, after the other rank gave up on the frozen one."""
    import signal

    t = time.time()
    while time.time() - t < timeout:
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            return
        pending = [int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith(("SigPnd:", "ShdPnd:"))]
        if any(p >> (signal.SIGTERM - 1) & 1 for p in pending):
            os.kill(pid, signal.SIGCONT)
            return
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["", ":stall"])
def test_dead_or_stuck_rank_ends_the_job_with_a_clear_message(tmp_path, base, how):
    import signal

    t = time.time()  # rank 1 is killed (or frozen) from outside once the first checkpoint is written
    rc = kill_when_checkpointed(
        _launcher(2)
        + base
        + ["--hookpoints", "model.layers.1", "--dist-timeout", "10", "--tokens", "65536", "--out", str(tmp_path / "d")],
        tmp_path / "d",
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
        pick_pid=lambda pid: _rank_pid(pid, 1),
        sig=signal.SIGSTOP if how else signal.SIGKILL,
        after=_continue_once_told_to_stop if how else None,
    )
    stderr = kill_when_checkpointed.stderr
    assert rc != 0
    assert time.time() - t < 200  # bounded by --dist-timeout, not a hang
    if how:  # the waiting rank times out and says what happened; torchrun then stops the stuck one
        assert "lost the other ranks" in stderr and "--dist-timeout 10" in stderr, stderr[-3000:]
    else:  # torchrun sees the dead rank and stops the others, naming the root cause
        assert "rank      : 1" in stderr and "SIGKILL" in stderr, stderr[-3000:]


def test_data_parallel_from_the_activation_cache(tmp_path, tiny_model_dir, text_corpus):
    r = cli(
        [
            "cache-activations",
            "--model",
            str(tiny_model_dir),
            "--corpus",
            str(text_corpus),
            "--hookpoints",
            "model.layers.1",
            "--tokens",
            "8192",
            "--context",
            "64",
            "--batch-tokens",
            "512",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "cache"),
        ]
    )
    assert r.returncode == 0, r.stderr
    args = [
        "train",
        "--from-activations",
        str(tmp_path / "cache"),
        "--model",
        str(tiny_model_dir),
        "--hookpoints",
        "model.layers.1",
    ] + COMMON
    assert cli(args + ["--out", tmp_path / "one"]).returncode == 0
    r = _run(args + ["--out", str(tmp_path / "two")], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(tmp_path / "one" / "model.layers.1-topk-k8"), _weights(tmp_path / "two" / "model.layers.1-topk-k8")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-4, rtol=2e-4)


DP_CASES = {
    "batchtopk": ["--arch", "batchtopk"],
    "matryoshka": ["--arch", "matryoshka", "--groups", "32", "32", "64", "128"],
    "codebook": ["--arch", "codebook"],
    "skip": ["--skip", "--hookpoints", "model.layers.1.post_attention_layernorm->model.layers.1.mlp"],
}


@pytest.mark.parametrize("case", list(DP_CASES))
def test_data_parallel_matches_single_process_for_every_type(tmp_path, base, case):
    """Data-parallel training gives one process's weights for each type it allows (gated is refused:
    tests/test_architectures.py; it failed this comparison on W_enc). BatchTopK and
    Matryoshka select over every rank's rows (row_split.py): with each rank's own k x (its rows)
    this test fails for them, as the selection differs wherever one rank's rows are denser."""
    args = base + ["--hookpoints", "model.layers.1", "--tokens", "4096"] + DP_CASES[case]
    outs = {n: tmp_path / f"n{n}" for n in (1, 2)}
    for n, out in outs.items():  # the one-process reference in this process
        r = cli(args + ["--out", out]) if n == 1 else _run(args + ["--out", str(out)], nproc=n)
        assert r.returncode == 0, r.stderr[-3000:]
    (name,) = [p.name for p in outs[1].iterdir() if (p / "cfg.json").exists()]
    (a, _), (b, _) = load_sae(outs[1] / name), load_sae(outs[2] / name)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, atol=2e-4, rtol=2e-4, msg=k)
    if case in ("batchtopk", "matryoshka"):
        assert a.threshold.item() > 0 and a.threshold.item() == pytest.approx(b.threshold.item(), rel=1e-4)
