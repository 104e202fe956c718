"""A public release, pulled (`saelab pull`, from a local folder in sparsify's exact format) and then
fine-tuned with `saelab train --init-from`: the run adopts the release's model, hookpoint, latents
and k, starts from its weights and improves its reconstruction. The hub is never called."""

import json

import numpy as np
import torch

from saelab.cli import main
from saelab.data import load_token_rows
from saelab.models import collect_activations, load_model
from saelab.sae.folder import load_sae
from saelab.storage import read_json, write_tensors

D, S, K = 64, 256, 8  # the tiny Llama's width; a sparsify TopK SAE of 256 latents


def _fvu(sae, x):
    return float((sae.reconstruct(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_pulled_release_fine_tunes_with_init_from(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    monkeypatch.setattr("saelab.sae.releases.download", lambda *a, **k: (_ for _ in ()).throw(AssertionError("hub")))
    g = torch.Generator().manual_seed(3)
    W_dec = torch.randn(S, D, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    repo = tmp_path / "repo" / "layers.1"  # sparsify: one folder per hookpoint, relative to the base model
    repo.mkdir(parents=True)
    (repo / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": D,
                "k": K,
                "num_latents": S,
                "expansion_factor": 4,
                "activation": "topk",
                "normalize_decoder": True,
            }
        )
    )
    write_tensors(
        repo / "sae.safetensors",
        {"encoder.weight": W_dec.clone(), "encoder.bias": torch.zeros(S), "W_dec": W_dec, "b_dec": torch.zeros(D)},
    )
    registry = tmp_path / "releases.json"  # a release of the tiny model, as the packaged registry lists real ones
    registry.write_text(
        json.dumps(
            {
                "tiny-sparsify": {
                    "repo": "nobody/tiny",
                    "model": str(tiny_model_dir),
                    "format": "sparsify",
                    "context": 64,
                    "ids": {"template": "layers.{layer}", "layers": 4},
                    "path": "{sae_id}",
                    "hookpoint": "model.layers.{layer}",
                }
            }
        )
    )
    from saelab.sae.releases import PullConfig, pull_release

    pulled = pull_release(
        PullConfig(
            release="tiny-sparsify", sae_id="layers.1", out=str(tmp_path / "pulled"), local=str(tmp_path / "repo")
        ),
        registry_path=registry,
    )
    run = tmp_path / "ft"
    assert (
        main(
            [
                "train",
                "--init-from",
                str(pulled),
                "--corpus",
                str(text_corpus),
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
                "2",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    name = "model.layers.1-topk-k8"  # hookpoint, arch and k adopted from the pulled folder
    tuned, _ = load_sae(run / name)
    before, _ = load_sae(pulled)
    assert read_json(run / name / "cfg.json")["saelab"]["init_from"]["path"] == str(pulled.resolve())
    assert tuned.cfg.d_sae == S and tuned.cfg.k == K
    # it started from the release: decoder directions stay close to the pulled ones (a fresh init is ~0.1 apart)
    cos = torch.nn.functional.cosine_similarity(tuned.folded_state()["W_dec"], W_dec, dim=1)
    assert cos.mean() > 0.6, cos.mean()
    lm = load_model(str(tiny_model_dir))
    rows = load_token_rows(str(text_corpus), lm.tokenizer, 64)
    ids = torch.from_numpy(np.asarray(rows.tokens[rows.heldout_rows[:16]], dtype=np.int64))
    with torch.no_grad():
        x = collect_activations(lm.model, ids, ["model.layers.1"])["model.layers.1"][:, 1:].reshape(-1, D).float()
    assert _fvu(tuned, x) < 0.9 * _fvu(before, x)
