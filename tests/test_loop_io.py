"""The training loop reads each SAE's raw inputs (objective.io) only where they are used: the first
step's data-dependent init and the data `finalize` calibrates on (the last step's last micro-batch,
or the last chunk's sample), not once per micro-batch per SAE."""

import pytest
import torch
from conftest import train_cfg

from saelab.sae.batchtopk import BatchTopKSae
from saelab.train.loop import TrainingRun
from saelab.train.objectives import EndToEndObjective, LocalObjective


@pytest.mark.parametrize("loss", ["e2e", "local"])
def test_inputs_read_once_and_finalize_sees_the_last_data(tmp_path, tiny_model_dir, text_corpus, monkeypatch, loss):
    torch.set_num_threads(1)
    cls = EndToEndObjective if loss == "e2e" else LocalObjective
    reads, finalized, in_loss = [], [], []
    io, finalize, loss_fn = cls.io, BatchTopKSae.finalize, cls.loss

    def counting_io(self, m, part, shared=None):
        x, y = io(self, m, part, shared)
        if not in_loss:  # the local loss reads its own batch through io(): not the loop's read
            reads.append((m.name, x.clone()))
        return x, y

    def flagged_loss(self, *args):
        in_loss.append(1)
        try:
            return loss_fn(self, *args)
        finally:
            in_loss.pop()

    def recording_finalize(self, x):
        finalized.append(x.clone())
        return finalize(self, x)

    monkeypatch.setattr(cls, "io", counting_io)
    monkeypatch.setattr(cls, "loss", flagged_loss)
    monkeypatch.setattr(BatchTopKSae, "finalize", recording_finalize)
    # e2e: 2048 tokens = 4 steps of 8 rows in micro-batches of 3, 3, 2 rows; local: 2 chunks of 4 batches
    kw = dict(e2e_micro_rows=3, tokens=2048) if loss == "e2e" else dict(tokens=4096, buffer_batches=4)
    cfg = train_cfg(
        tmp_path / loss,
        tiny_model_dir,
        text_corpus,
        loss=loss,
        arch="batchtopk",
        k=[4, 8],
        latents=64,
        batch_tokens=512,
        threads=1,
        **kw,
    )
    TrainingRun(cfg).run()
    names = sorted({n for n, _ in reads})
    assert len(names) == 2
    # e2e: the first step's first part (init) + every step's last part (per micro-batch: 4 steps x 3 parts
    # = 12 per SAE); local: each chunk's sample once (per batch: 8 per SAE)
    assert [sum(n == name for n, _ in reads) for name in names] == ([5, 5] if loss == "e2e" else [2, 2])
    assert len(finalized) == 2
    last = {n: x for n, x in reads}  # each SAE's last read
    for x, name in zip(finalized, names):
        torch.testing.assert_close(x, last[name][:16384], rtol=0, atol=0)
    if loss == "e2e":  # the last micro-batch holds 2 of the step's 8 rows: under 2 * 64 positions
        assert 0 < last[names[0]].shape[0] <= 128
