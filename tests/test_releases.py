"""`saelab pull`: each release format read from a local folder written in that exact format (tiny
tensors), checked against a re-implementation of the foreign forward pass; wrong formats, unknown
releases and sae-ids fail clearly; the hub is never called."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.cli import main
from saelab.errors import UserError
from saelab.sae.folder import load_sae
from saelab.sae.releases import PullConfig, find_release, pull_release, registry
from saelab.storage import write_tensors

D, S = 8, 16


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the hub must not be called in tests")

    monkeypatch.setattr("saelab.sae.releases.download", refuse)


def _x():
    return torch.randn(32, D, generator=torch.Generator().manual_seed(1)) * 3


def _check(folder, reference, hookpoint):
    sae, cfg = load_sae(folder)
    assert sae.cfg.hookpoint == hookpoint
    x = _x()
    want_lat, want_rec = reference(x)
    assert (want_lat > 0).any() and (want_lat == 0).any()  # the test exercises both sides of the threshold
    # float32 sums over d_in in another order (the folded layout, the BLAS blocking of the thread count)
    # differ by ~1e-5 at these magnitudes; a wrong layout or norm is off by orders more
    torch.testing.assert_close(sae.encode_raw(x).to_dense(), want_lat, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.reconstruct(x), want_rec, atol=1e-4, rtol=1e-4)
    return cfg


def test_gemma_scope_params_npz(tmp_path):
    g = torch.Generator().manual_seed(0)
    W_enc, W_dec = torch.randn(D, S, generator=g), torch.randn(S, D, generator=g)
    b_enc, b_dec, thr = torch.randn(S, generator=g), torch.randn(D, generator=g), torch.rand(S, generator=g) * 2
    sae_id = "layer_3/width_16k/average_l0_5"
    (tmp_path / "repo" / sae_id).mkdir(parents=True)
    np.savez(
        tmp_path / "repo" / sae_id / "params.npz",
        W_enc=W_enc.numpy(),
        W_dec=W_dec.numpy(),
        b_enc=b_enc.numpy(),
        b_dec=b_dec.numpy(),
        threshold=thr.numpy(),
    )

    def ref(x):  # Gemma Scope's JumpReLU: no b_dec subtraction before the encoder
        pre = x @ W_enc + b_enc
        lat = pre * (pre > thr)
        return lat, lat @ W_dec + b_dec

    out = pull_release(
        PullConfig(
            release="gemma-scope-2b-pt-res", sae_id=sae_id, out=str(tmp_path / "out"), local=str(tmp_path / "repo")
        )
    )
    cfg = _check(out, ref, "model.layers.3")
    assert cfg["saelab"]["imported_from"]["release"] == "gemma-scope-2b-pt-res"
    assert cfg["saelab"]["model_spec"] == "google/gemma-2-2b"
    out = pull_release(
        PullConfig(
            release="gemma-scope-2b-pt-mlp", sae_id=sae_id, out=str(tmp_path / "mlp"), local=str(tmp_path / "repo")
        )
    )
    assert load_sae(out)[0].cfg.hookpoint == "model.layers.3.post_feedforward_layernorm"


def test_llama_scope_dataset_wise_norm(tmp_path):
    g = torch.Generator().manual_seed(0)
    enc, dec = torch.randn(S, D, generator=g), torch.randn(D, S, generator=g)
    enc_b, dec_b = torch.randn(S, generator=g), torch.randn(D, generator=g)
    theta, n_in, n_out = 0.7, 5.0, 9.0
    sae_id = "Llama3_1-8B-Base-L7R-8x"
    f = tmp_path / "repo" / sae_id
    (f / "checkpoints").mkdir(parents=True)
    (f / "hyperparams.json").write_text(
        json.dumps(
            {
                "d_model": D,
                "d_sae": S,
                "act_fn": "jumprelu",
                "jump_relu_threshold": theta,
                "norm_activation": "dataset-wise",
                "dataset_average_activation_norm": {"in": n_in, "out": n_out},
                "hook_point_in": "blocks.7.hook_resid_post",
                "hook_point_out": "blocks.7.hook_resid_post",
            }
        )
    )
    write_tensors(
        f / "checkpoints" / "final.safetensors",
        {"encoder.weight": enc, "encoder.bias": enc_b, "decoder.weight": dec, "decoder.bias": dec_b},
    )

    def ref(x):  # input scaled to norm sqrt(d), output scaled back with the output norm
        pre = (x * D**0.5 / n_in) @ enc.t() + enc_b
        lat = pre * (pre > theta)
        return lat, (lat @ dec.t() + dec_b) * n_out / D**0.5

    _check(
        pull_release(
            PullConfig(
                release="llama-scope-lxr-8x", sae_id=sae_id, out=str(tmp_path / "out"), local=str(tmp_path / "repo")
            )
        ),
        ref,
        "model.layers.7",
    )


def _saelens_folder(folder, W_enc, b_enc, W_dec, b_dec, hook="blocks.2.hook_resid_pre"):
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": D,
                "d_sae": S,
                "dtype": "float32",
                "apply_b_dec_to_input": True,
                "normalize_activations": "none",
                "hook_name": hook,
                "model_name": "gpt2",
                "context_size": 128,
            }
        )
    )
    write_tensors(folder / "sae_weights.safetensors", {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec})


def test_saelens_release_uses_the_registry_hookpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    W_enc, W_dec = torch.randn(D, S, generator=g), torch.randn(S, D, generator=g)
    b_enc, b_dec = torch.randn(S, generator=g), torch.randn(D, generator=g)
    _saelens_folder(tmp_path / "repo" / "blocks.2.hook_resid_pre", W_enc, b_enc, W_dec, b_dec)

    def ref(x):
        lat = torch.relu((x - b_dec) @ W_enc + b_enc)
        return lat, lat @ W_dec + b_dec

    out = pull_release(
        PullConfig(
            release="gpt2-small-res-jb",
            sae_id="blocks.2.hook_resid_pre",
            out=str(tmp_path / "out"),
            local=str(tmp_path / "repo"),
        )
    )
    cfg = _check(out, ref, "transformer.h.2:input")  # GPT-2's module names, not Llama's
    assert cfg["saelab"]["imported_from"]["cfg"]["hook_name"] == "blocks.2.hook_resid_pre"


def test_sparsify_release(tmp_path):
    g = torch.Generator().manual_seed(0)
    enc, W_dec = torch.randn(S, D, generator=g), torch.randn(S, D, generator=g)
    enc_b, b_dec, k = torch.randn(S, generator=g), torch.randn(D, generator=g), 4
    f = tmp_path / "repo" / "layers.5"
    f.mkdir(parents=True)
    (f / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": D,
                "k": k,
                "num_latents": S,
                "expansion_factor": 2,
                "activation": "topk",
                "normalize_decoder": True,
            }
        )
    )
    write_tensors(f / "sae.safetensors", {"encoder.weight": enc, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec})

    def ref(x):
        pre = torch.relu((x - b_dec) @ enc.t() + enc_b)
        v, i = pre.topk(k, dim=-1)
        lat = torch.zeros_like(pre).scatter_(-1, i, v)
        return lat, lat @ W_dec + b_dec

    _check(
        pull_release(
            PullConfig(
                release="sae-pythia-160m-32k",
                sae_id="layers.5",
                out=str(tmp_path / "out"),
                local=str(tmp_path / "repo"),
            )
        ),
        ref,
        "gpt_neox.layers.5",
    )


def test_files_in_the_wrong_format_fail_clearly(tmp_path):
    z = torch.zeros
    _saelens_folder(tmp_path / "repo" / "layer_1/width_16k/average_l0_9", z(D, S), z(S), z(S, D), z(D))
    with pytest.raises(UserError, match="no params.npz: not a Gemma Scope folder"):
        pull_release(
            PullConfig(
                release="gemma-scope-2b-pt-res",
                sae_id="layer_1/width_16k/average_l0_9",
                out=str(tmp_path / "a"),
                local=str(tmp_path / "repo"),
            )
        )
    _saelens_folder(tmp_path / "repo" / "layers.1", z(D, S), z(S), z(S, D), z(D))
    with pytest.raises(UserError, match="is a saelens folder but release sae-pythia-160m-32k says sparsify"):
        pull_release(
            PullConfig(
                release="sae-pythia-160m-32k", sae_id="layers.1", out=str(tmp_path / "b"), local=str(tmp_path / "repo")
            )
        )
    bad = tmp_path / "repo" / "layer_2/width_16k/average_l0_9"
    bad.mkdir(parents=True)
    np.savez(
        bad / "params.npz",
        W_enc=np.zeros((D, S), np.float32),
        W_dec=np.zeros((S, D + 1), np.float32),
        b_enc=np.zeros(S, np.float32),
        b_dec=np.zeros(D, np.float32),
        threshold=np.zeros(S, np.float32),
    )
    with pytest.raises(UserError, match=r"w_dec has shape \(16, 9\), expected \(16, 8\)"):
        pull_release(
            PullConfig(
                release="gemma-scope-2b-pt-res",
                sae_id="layer_2/width_16k/average_l0_9",
                out=str(tmp_path / "c"),
                local=str(tmp_path / "repo"),
            )
        )
    assert not any((tmp_path / n).exists() for n in "abc")  # nothing written


def test_unknown_release_and_sae_id_give_close_matches(tmp_path, capsys):
    with pytest.raises(UserError, match="unknown release 'gemma-scope-2b-pt-rs'; closest: gemma-scope-2b-pt-res"):
        find_release("gemma-scope-2b-pt-rs")
    with pytest.raises(UserError, match="no sae-id 'Llama3_1-8B-Base-L40R-8x'; closest: Llama3_1-8B-Base-L4R-8x"):
        pull_release(
            PullConfig(
                release="llama-scope-lxr-8x",
                sae_id="Llama3_1-8B-Base-L40R-8x",
                out=str(tmp_path / "x"),
                local=str(tmp_path),
            )
        )
    with pytest.raises(UserError, match="no sae-id 'layer_20/width_16k/l0_71'.*layer_20/width_16k/average_l0_71"):
        pull_release(
            PullConfig(
                release="gemma-scope-2b-pt-res",
                sae_id="layer_20/width_16k/l0_71",
                out=str(tmp_path / "x"),
                local=str(tmp_path),
            )
        )
    assert main(["pull", "sae-llama-3-8b-32x", "--sae-id", "layer.3", "--out", str(tmp_path / "x")]) == 2
    assert "closest: layers.3" in capsys.readouterr().err
    assert main(["pull", "gpt2-small-res-jb", "--list"]) == 0
    assert "blocks.11.hook_resid_pre" in capsys.readouterr().out


def test_every_registry_entry_resolves():
    reg = registry()
    assert {r.format for r in reg.values()} == {"gemma-scope", "llama-scope", "saelens", "sparsify", "circuit-tracer"}
    for r in reg.values():
        for sae_id in r.ids:
            path, hook = r.resolve(sae_id)
            assert path and "{" not in hook
