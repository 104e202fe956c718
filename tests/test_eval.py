"""Evaluation math: an exact dictionary scores perfectly, ablations hurt, plots and files appear."""

import pytest
import torch

from saelab.data import load_token_rows
from saelab.evaluate.run import run_eval
from saelab.errors import UserError
from saelab.evaluate.metrics import EvalBudget, evaluate
from saelab.models import load_model
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import save_sae


def exact_sae(d: int, hookpoint: str):
    """A ReLU dictionary that reconstructs any input exactly: latents +x and -x."""
    sae = build_sae(SaeConfig("relu", d_in=d, d_sae=2 * d, hookpoint=hookpoint))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def setup(tiny_model_dir, text_corpus):
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    return lm, rows


def test_exact_dictionary_has_zero_error_and_zero_kl(setup):
    lm, rows = setup
    sae = exact_sae(64, "model.layers.1")
    rand = build_sae(SaeConfig("topk", d_in=64, d_sae=128, hookpoint="model.layers.1", k=4)).eval()
    exact, noisy = evaluate(lm.model, lm.tokenizer, [(sae, {}), (rand, {})], rows,
                            EvalBudget(tokens=2048, ce_tokens=512))
    assert exact["fvu"] < 1e-6 and exact["cosine"] > 0.9999
    assert abs(exact["kl"]) < 1e-4 and abs(exact["ce_increase"]) < 1e-4 and abs(exact["kl_all_positions"]) < 1e-4
    assert exact["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-3)
    assert exact["l0"] == pytest.approx(64, abs=1)  # every dimension is nonzero, one latent each
    assert noisy["fvu"] > 0.3 and noisy["kl"] > exact["kl"] + 1e-4
    assert noisy["ce_zero_ablation"] > noisy["ce_clean"]
    assert 0 <= noisy["dead_fraction"] <= 1


def test_eval_command_writes_metrics_and_plot_and_refuses_overwrite(tmp_path, tiny_model_dir, text_corpus):
    sae = exact_sae(64, "model.layers.1")
    folder = save_sae(sae, tmp_path / "exact", str(tiny_model_dir), 64,
                      {"model_spec": str(tiny_model_dir), "corpus": str(text_corpus)})
    (r,) = run_eval([str(folder)], tokens=1024, ce_tokens=256, quiet=True)
    assert (folder / "metrics.json").exists() and (folder / "metrics_density.png").stat().st_size > 1000
    assert r["fvu"] < 1e-6
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run_eval([str(folder)], tokens=1024, ce_tokens=0)


def test_eval_rejects_width_mismatch_and_corrupt_files(tmp_path, tiny_model_dir, text_corpus):
    sae = exact_sae(32, "model.layers.1")
    folder = save_sae(sae, tmp_path / "narrow", str(tiny_model_dir), 64,
                      {"model_spec": str(tiny_model_dir), "corpus": str(text_corpus)})
    with pytest.raises(UserError, match="does not match"):
        run_eval([str(folder)], tokens=512, ce_tokens=0)
    w = folder / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        run_eval([str(folder)], tokens=512, ce_tokens=0)
