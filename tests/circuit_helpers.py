"""Tiny random replacement folders (a PLT set or a CLT over every MLP of a tiny model), built by hand in a
second: what the circuits tests (attribution, interventions, the graph page, circuit-tracer agreement) share."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.sae.replacement import write_replacement
from saelab.sinks import SinkConfig
from saelab.train.layers import layer_plan


def provenance(model_dir, corpus="builtin") -> Provenance:
    sink = SinkConfig(first_positions=1, mask_special=True, norm_factor=5.0)
    return Provenance(model_spec=str(model_dir), model_name="tiny", corpus=str(corpus), context=64, sink=sink)


def _randomise_biases(sae, gen: torch.Generator, scale: float) -> None:
    with torch.no_grad():
        for name in ("b_enc", "b_dec"):
            p = getattr(sae, name)
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def tiny_plt(
    model_dir,
    out: Path,
    arch: str = "topk",
    n: int = 32,
    k: int = 4,
    skip: bool = False,
    seed: int = 0,
    bias: float = 0.1,
    corpus="builtin",
) -> Path:
    """A random per-layer transcoder set over every MLP of the model at `model_dir`, saved at `out`."""
    plan = layer_plan(str(model_dir), "all")
    folders = []
    for l, (a, b) in enumerate(zip(plan.input_sites, plan.output_sites)):
        d = _width(model_dir)
        extra = {"k": k} if arch in ("topk", "batchtopk") else {}
        sae = build_sae(SaeConfig(arch, d_in=d, d_sae=n, hookpoint=a, d_out=d, out_hookpoint=b, skip=skip, **extra))
        gen = torch.Generator().manual_seed(seed * 100 + l)
        sae.reset_parameters(gen)
        _randomise_biases(sae, gen, bias)
        if skip:
            with torch.no_grad():
                sae.W_skip.copy_(torch.randn(sae.W_skip.shape, generator=gen) * 0.05)
        folders.append(save_sae(sae.eval(), out / f"layer{l}", provenance(model_dir, corpus)))
    write_replacement(out, "plt", plan, str(model_dir), "tiny", folders)
    return out


def tiny_clt(model_dir, out: Path, n: int = 32, k: int = 4, seed: int = 0, bias: float = 0.1, corpus="builtin") -> Path:
    """A random cross-layer transcoder over every MLP of the model at `model_dir`, saved at `out`."""
    plan = layer_plan(str(model_dir), "all")
    L, d = len(plan.layers), _width(model_dir)
    cfg = SaeConfig(
        arch="clt",
        d_in=L * d,
        d_sae=L * n,
        hookpoint="+".join(plan.input_sites),
        d_out=L * d,
        out_hookpoint="+".join(plan.output_sites),
        k=k,
        extra={"clt_sparsity": "topk"},
    )
    clt = build_sae(cfg)
    gen = torch.Generator().manual_seed(seed)
    clt.reset_parameters(gen)
    _randomise_biases(clt, gen, bias)
    f = save_sae(clt.eval(), out / "clt", provenance(model_dir, corpus))
    write_replacement(out, "clt", plan, str(model_dir), "tiny", [f])
    return out


def _width(model_dir) -> int:
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return cfg.get("hidden_size") or cfg.get("n_embd")


def make_tiny_gpt2(folder: Path, embedded_folder: Path, n_layer: int = 3) -> Path:
    """A random 64-wide GPT-2 with the embedded tokenizer, saved as a local model folder."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=49152, n_embd=64, n_layer=n_layer, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder
