"""Evaluation math: an exact dictionary scores perfectly, ablations hurt, plots and files appear;
evaluation reopens the model and held-out split an SAE was trained with, and says when it cannot."""

import json

import numpy as np
import pytest
import torch
from conftest import train_cfg

from saelab.data import load_token_rows
from saelab.errors import UserError
from saelab.evaluate.metrics import EvalBudget, evaluate
from saelab.evaluate.run import EvalConfig
from saelab.evaluate.run import evaluate as evaluate_folders  # metrics.evaluate measures loaded SAEs
from saelab.models import load_model
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, open_sae, save_sae
from saelab.storage import read_json
from saelab.train.loop import TrainingRun


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


def _prov(model_dir, corpus, **kw) -> Provenance:
    return Provenance(model_spec=str(model_dir), model_name=str(model_dir), corpus=str(corpus), context=64, **kw)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, text_corpus):
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    return lm, rows


def test_exact_dictionary_has_zero_error_and_zero_kl(setup):
    lm, rows = setup
    sae = exact_sae(64, "model.layers.1")
    rand = build_sae(SaeConfig("topk", d_in=64, d_sae=128, hookpoint="model.layers.1", k=4)).eval()
    exact, noisy = evaluate(
        lm.model, lm.tokenizer, [(sae, {}), (rand, {})], rows, EvalBudget(tokens=2048, ce_tokens=512)
    )
    assert exact["fvu"] < 1e-6 and exact["cosine"] > 0.9999
    assert abs(exact["kl"]) < 1e-4 and abs(exact["ce_increase"]) < 1e-4 and abs(exact["kl_all_positions"]) < 1e-4
    assert exact["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-3)
    assert exact["l0"] == pytest.approx(64, abs=1)  # every dimension is nonzero, one latent each
    assert noisy["fvu"] > 0.3 and noisy["kl"] > exact["kl"] + 1e-4
    # the ablation ran and changed the loss (on a random model it need not raise it: that depends on the rows)
    assert abs(noisy["ce_zero_ablation"] - noisy["ce_clean"]) > 1e-3
    assert 0 <= noisy["dead_fraction"] <= 1


def test_relative_reconstruction_bias_measures_shrinkage(setup):
    """gamma (both sides centred by their means): 1 for an exact dictionary, c for one whose output is
    shrunk by c (the decoder scaled), whatever else the reconstruction gets wrong."""
    lm, rows = setup
    exact, shrunk = exact_sae(64, "model.layers.1"), exact_sae(64, "model.layers.1")
    with torch.no_grad():
        shrunk.W_dec.mul_(0.6)
    a, b = evaluate(lm.model, lm.tokenizer, [(exact, {}), (shrunk, {})], rows, EvalBudget(tokens=1024, ce_tokens=0))
    assert a["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-5)
    assert b["relative_reconstruction_bias"] == pytest.approx(0.6, abs=1e-5)
    assert b["fvu"] > 0.1  # (the shrunk one is a poor reconstruction: FVU alone does not say why)


def test_eval_command_writes_metrics_and_plot_and_refuses_overwrite(tmp_path, tiny_model_dir, text_corpus):
    sae = exact_sae(64, "model.layers.1")
    folder = save_sae(sae, tmp_path / "exact", _prov(tiny_model_dir, text_corpus))
    (r,) = evaluate_folders(EvalConfig(sae_dirs=[str(folder)], tokens=1024, ce_tokens=256), quiet=True)
    assert (folder / "metrics.json").exists() and (folder / "metrics_density.png").stat().st_size > 1000
    assert r["fvu"] < 1e-6
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        evaluate_folders(EvalConfig(sae_dirs=[str(folder)], tokens=1024, ce_tokens=0))


def test_eval_rejects_width_mismatch_and_corrupt_files(tmp_path, tiny_model_dir, text_corpus):
    sae = exact_sae(32, "model.layers.1")
    folder = save_sae(sae, tmp_path / "narrow", _prov(tiny_model_dir, text_corpus))
    with pytest.raises(UserError, match="does not match"):
        evaluate_folders(EvalConfig(sae_dirs=[str(folder)], tokens=512, ce_tokens=0))
    w = folder / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        evaluate_folders(EvalConfig(sae_dirs=[str(folder)], tokens=512, ce_tokens=0))


def test_eval_uses_the_heldout_split_the_sae_was_trained_with(tmp_path, tiny_model_dir, text_corpus, capsys):
    """Trained with --heldout-fraction 0.01, an SAE is evaluated on exactly that 1%: the default 5%
    would include rows it trained on."""
    cfg = train_cfg(
        tmp_path / "run", tiny_model_dir, text_corpus, heldout_fraction=0.01, tokens=2048, checkpoint_every=10**9
    )
    (folder,) = TrainingRun(cfg).run()
    f = open_sae(folder)  # the seam: what training wrote is what evaluation reads
    assert (f.provenance.model_spec, f.provenance.corpus, f.provenance.context) == (
        str(tiny_model_dir),
        str(text_corpus),
        64,
    )
    assert f.provenance.heldout_fraction == 0.01 and f.provenance.data_fingerprint
    data = f.open_data()
    lm, rows = data
    ours = load_token_rows(str(text_corpus), lm.tokenizer, 64, heldout_fraction=0.01)
    default = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    assert np.array_equal(rows.heldout_rows, ours.heldout_rows) and np.array_equal(rows.train_rows, ours.train_rows)
    assert not set(rows.heldout_rows) & set(ours.train_rows)
    assert set(default.heldout_rows) & set(ours.train_rows)  # what evaluating with the defaults would leak
    assert data.matches == [True] and data.matches_training is True

    # every held-out row evaluated (a budget larger than the split): 1% of the rows, not 5%
    evaluate_folders(EvalConfig(sae_dirs=[str(folder)], tokens=10**7, ce_tokens=64), quiet=True)
    m = read_json(folder / "metrics.json")
    assert m["heldout_fraction"] == 0.01 and m["data_matches_training"] is True
    assert m["data_fingerprint"] == f.provenance.data_fingerprint and m["corpus"] == str(text_corpus)
    assert 0 < m["metrics"]["eval_tokens"] <= len(ours.heldout_rows) * 64 < len(default.heldout_rows) * 64

    # another corpus: evaluated on it when asked, with a note, and recorded as not the training data
    other = tmp_path / "other.txt"
    other.write_text(" ".join(reversed(text_corpus.read_text().split()))[:60_000])
    capsys.readouterr()
    evaluate_folders(
        EvalConfig(
            sae_dirs=[str(folder)], tokens=1024, ce_tokens=0, corpus=str(other), out=str(tmp_path / "other.json")
        ),
        quiet=True,
    )
    assert "different corpus" in capsys.readouterr().err
    m2 = read_json(tmp_path / "other.json")
    assert m2["corpus"] == str(other) and m2["data_matches_training"] is False

    # the recorded corpus, but its rows changed since training: a warning, and recorded as such
    cfg_p = folder / "cfg.json"
    c = json.loads(cfg_p.read_text())
    c["saelab"]["data_fingerprint"] = "0123456789abcdef"
    cfg_p.write_text(json.dumps(c))
    assert open_sae(folder).open_data().matches == [False]
    assert "saelab: warning" in capsys.readouterr().err


def test_folders_evaluated_together_must_share_their_data(tmp_path, tiny_model_dir, text_corpus):
    sae = exact_sae(64, "model.layers.1")
    a = save_sae(sae, tmp_path / "a", _prov(tiny_model_dir, text_corpus, heldout_fraction=0.01))
    b = save_sae(sae, tmp_path / "b", _prov(tiny_model_dir, text_corpus))
    with pytest.raises(UserError, match="disagree on heldout fraction: 0.01 .*0.05"):
        evaluate_folders(EvalConfig(sae_dirs=[str(a), str(b)], tokens=512, ce_tokens=0))
    c = save_sae(sae, tmp_path / "c", _prov(tiny_model_dir, tmp_path / "elsewhere.txt", heldout_fraction=0.01))
    with pytest.raises(UserError, match="disagree on corpus.*or pass --corpus"):
        evaluate_folders(EvalConfig(sae_dirs=[str(a), str(c)], tokens=512, ce_tokens=0))


def test_heldout_selection_spreads_over_the_split_not_its_first_rows():
    """The held-out split is in corpus order (prose first, then source files by path): a budget of a
    few rows must sample all of it, the same rows every time, each row once."""
    from saelab.data import TokenRows
    from saelab.evaluate.metrics import heldout_selection

    held = np.arange(1000, 1400, 2)  # 200 held-out rows
    rows = TokenRows(np.zeros((2000, 8), np.int64), np.arange(0, 1000), held, "f", "s")
    sel = heldout_selection(rows, 10 * 8)  # 10 rows' worth of tokens
    assert len(sel) == 10 and len(set(sel.tolist())) == 10 and set(sel) <= set(held)
    assert sel.min() == held[0] and sel.max() >= held[-1] - 2 * 20  # first and last twentieth both sampled
    assert np.all(np.diff(sel) == 40)  # every 20th held-out row
    assert np.array_equal(sel, heldout_selection(rows, 80))
    assert np.array_equal(heldout_selection(rows, 10**9), held)  # more than there is: all of it
    assert len(heldout_selection(rows, 1)) == 1
