"""Shared by the circuit-tracer tests: re-implementations of circuit-tracer's forwards (from its
circuit_tracer/transcoder/single_layer_transcoder.py and cross_layer_transcoder.py) and a tiny random Gemma 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def rand(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ct_plt_forward(t: dict, x: torch.Tensor, act: str, k: int | None = None) -> torch.Tensor:
    """SingleLayerTranscoder: encode = act(F.linear(x, W_enc, b_enc)), decode = acts @ W_dec + b_dec, skip =
    x @ W_skip.T; JumpReLU x * (x > threshold); TopK keeps the k largest pre-activations (no ReLU)."""
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    if act == "jumprelu":
        acts = pre * (pre > t["activation_function.threshold"])
    elif act == "topk":
        acts = pre * torch.zeros_like(pre).scatter_(-1, pre.topk(k, dim=-1).indices, 1)
    else:
        acts = torch.relu(pre)
    out = acts @ t["W_dec"] + t["b_dec"]
    return out + x @ t["W_skip"].T if "W_skip" in t else out


def ct_clt_forward(layers: list[dict], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """CrossLayerTranscoder: features_l = act(einsum('bd,fd->bf', x_l, W_enc_l) + b_enc_l) (JumpReLU when a
    threshold_l exists, else ReLU); recon[t] = sum_{s <= t} features_s @ W_dec_s[:, t - s] + b_dec_t."""
    feats = []
    for i, t in enumerate(layers):
        pre = torch.einsum("bd,fd->bf", xs[i], t[f"W_enc_{i}"]) + t[f"b_enc_{i}"]
        feats.append(pre * (pre > t[f"threshold_{i}"]) if f"threshold_{i}" in t else pre.relu())
    return [
        sum(feats[s] @ layers[s][f"W_dec_{s}"][:, t - s] for s in range(t + 1)) + layers[t][f"b_dec_{t}"]
        for t in range(len(layers))
    ]


def make_tiny_gemma2(folder: Path, embedded_folder: Path, d: int, n_layers: int) -> Path:
    """A tiny random Gemma 2 (sandwich norms, RMSNorm scale 1 + weight) with random norm weights, saved."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=49152,
        hidden_size=d,
        intermediate_size=16,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(torch.randn_like(p) * 0.5)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


def mlp_norm_io(model_dir: Path, layer: int, n_tokens: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, y) at Gemma 2 block `layer` on random tokens: u = x / rms(x) of the MLP norm's input (what
    ln2.hook_normalized / nnsight's `_norm` output is), y = the norm's output (saelab's mlp_in site)."""
    from saelab.models import collect_activations, load_model

    lm = load_model(str(model_dir))
    ids = torch.randint(0, 49152, (2, n_tokens // 2), generator=torch.Generator().manual_seed(layer))
    norm = f"model.layers.{layer}.pre_feedforward_layernorm"
    a = collect_activations(lm.model, ids, [norm + ":input", norm])
    x, y = a[norm + ":input"].reshape(n_tokens, -1), a[norm].reshape(n_tokens, -1)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), y
