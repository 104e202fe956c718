"""The GPU-path options, checked on the CPU: --lm-batch-tokens runs the LM on larger batches than the
SAE steps (fewer forwards) and trains on the same data, so the weights match the coupled run."""

import pytest
import torch
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae.folder import load_sae
from saelab.train.loop import train


def test_lm_batch_decoupled_from_the_sae_batch(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    import saelab.activations.stream as stream

    calls = []
    real = stream.collect_activations

    def counting(model, ids, hooks, *a, **k):
        calls.append(ids.shape[0])
        return real(model, ids, hooks, *a, **k)

    monkeypatch.setattr(stream, "collect_activations", counting)
    kw = dict(tokens=4096, batch_tokens=512, buffer_batches=4, checkpoint_every=10**9)
    (a,) = train(train_cfg(tmp_path / "a", tiny_model_dir, text_corpus, **kw))
    coupled, calls[:] = list(calls), []
    (b,) = train(train_cfg(tmp_path / "b", tiny_model_dir, text_corpus, lm_batch_tokens=2048, **kw))
    assert coupled == [8] * 8 and calls == [32, 32]  # 512-token LM batches vs one forward per 2,048-token chunk
    wa, wb = load_sae(a)[0].folded_state(), load_sae(b)[0].folded_state()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError, match="--lm-batch-tokens \\(256\\) must be at least --batch-tokens \\(512\\)"):
        train_cfg(tmp_path / "c", tiny_model_dir, text_corpus, lm_batch_tokens=256).validate()
