"""Shared fixtures: a tiny randomly initialised Llama (built from a config, saved as a local
model folder with the embedded tokenizer) and a small local text corpus."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SAELAB_CACHE", str(ROOT / ".cache"))
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def embedded_folder() -> Path:
    from saelab.models import _embedded_folder

    return _embedded_folder()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_folder) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
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
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


def make_chat_model(tmp_path_factory, tiny_model_dir, embedded_folder, context: int) -> Path:
    """A copy of the tiny random Llama with the embedded model's chat template and `context` positions
    (what the local LLM client needs: a chat template and a context length to check prompts against)."""
    import json

    d = tmp_path_factory.mktemp(f"tiny-chat-{context}") / "model"
    shutil.copytree(tiny_model_dir, d)
    shutil.copy(embedded_folder / "chat_template.jinja", d / "chat_template.jinja")
    cfg = json.loads((d / "config.json").read_text())
    cfg["max_position_embeddings"] = context
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """~150k tokens of English prose from the standard library's pydoc topics."""
    from pydoc_data import topics

    p = tmp_path_factory.mktemp("corpus") / "topics.txt"
    p.write_text("\n\n".join(topics.topics[k] for k in sorted(topics.topics)))
    return p


def train_cfg(out, model, corpus, **kw):
    from saelab.train.config import TrainConfig

    base = dict(
        out=str(out),
        model=str(model),
        corpus=str(corpus),
        hookpoints=["model.layers.1"],
        latents=256,
        k=[8],
        tokens=16384,
        batch_tokens=512,
        context=64,
        buffer_batches=4,
        checkpoint_every=4096,
        lr=[2e-3],
        threads=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def cli(args) -> subprocess.CompletedProcess:
    """`saelab ARGS` run in this process, as a CompletedProcess (return code, stdout, stderr): the same code
    as `python -m saelab.cli ARGS` without a new interpreter importing torch and transformers (several seconds
    on 2 busy cores). For runs a test does not kill and that need no torchrun. The process is left as a
    subprocess leaves it: torch's thread count (`--threads` sets it for the whole process) and the global
    random states (training seeds them) are restored, so the tests after it see what they saw before."""
    import contextlib
    import io
    import random

    import numpy as np

    from saelab.cli import main

    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc: children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_when_checkpointed(
    cmd: list[str], run_dir, env: dict | None = None, timeout: float = 600, pick_pid=None, sig: int = 9, after=None
) -> int:
    """Start `cmd` in its own process group and, as soon as a checkpoint appears in `run_dir`, send
    `sig` (SIGKILL) to the whole group, or to the one process `pick_pid(launcher_pid)` names: a crash
    from outside, so production code carries no test hooks. `after(picked_pid)`, if given, runs once the
    signal is sent, while the launcher runs on. -> the launcher's return code."""
    import signal
    import subprocess
    import time

    ckpt = Path(run_dir) / "checkpoint.safetensors"
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    t0 = time.time()
    while not ckpt.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.002)
    if pick_pid:
        picked = pick_pid(proc.pid)
        os.kill(picked, sig)
        if after:
            after(picked)
    else:  # torchrun's workers may sit in their own process groups: signal every descendant
        for pid in [proc.pid] + descendants(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    out, err = proc.communicate(timeout=timeout)
    kill_when_checkpointed.stderr = err
    return proc.returncode
