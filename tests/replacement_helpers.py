"""Tiny replacement folders for tests: a random tiny GPT-2, random (untrained) transcoders over a tiny
model's MLPs, saved as a PLT set or one CLT with replacement.json (tests/test_replacement.py,
tests/test_clt_features.py, tests/test_interventions.py, tests/test_validate.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.sae.replacement import write_replacement
from saelab.train.layers import layer_plan


def make_tiny_gpt2(folder: Path, embedded_folder: Path, n_layer: int = 3) -> Path:
    """A random 64-wide GPT-2 with the embedded tokenizer, saved as a local model folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=49152, n_embd=64, n_layer=n_layer, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_folder / name, folder / name)
    return folder


def random_transcoders(model_dir, kind: str, n: int = 32, k: int = 4, d: int = 64, seed: int = 0):
    """(plan, dictionaries): one random TopK transcoder per MLP of `model_dir` (kind "plt") or one random
    TopK CLT over all of them (kind "clt"), n latents per layer, sites of width d."""
    plan = layer_plan(str(model_dir), "all")
    gen = torch.Generator().manual_seed(seed)
    if kind == "clt":
        L = len(plan.layers)
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
        cfgs = [cfg]
    else:
        cfgs = [
            SaeConfig(arch="topk", d_in=d, d_sae=n, hookpoint=a, d_out=d, out_hookpoint=b, k=k)
            for a, b in zip(plan.input_sites, plan.output_sites)
        ]
    saes = []
    for cfg in cfgs:
        sae = build_sae(cfg)
        sae.reset_parameters(gen)
        saes.append(sae.eval())
    return plan, saes


def save_replacement(out: Path, model_dir, kind: str, plan, saes, prov: Provenance | None = None) -> Path:
    """`saes` saved under `out` (one folder each) with the replacement.json that names them."""
    prov = prov or Provenance(model_spec=str(model_dir), corpus="builtin", context=64)
    names = ["clt"] if kind == "clt" else [f"layer{x}" for x in plan.layers]
    folders = [save_sae(sae, out / name, prov) for sae, name in zip(saes, names)]
    write_replacement(out, kind, plan, str(model_dir), "tiny", folders)
    return out


def random_replacement(
    out: Path, model_dir, kind: str, n: int = 32, k: int = 4, seed: int = 0, corpus="builtin"
) -> Path:
    """A random replacement folder of `kind` (plt | clt) over every MLP of the tiny model at `model_dir`."""
    plan, saes = random_transcoders(model_dir, kind, n, k, seed=seed)
    return save_replacement(
        out, model_dir, kind, plan, saes, Provenance(str(model_dir), corpus=str(corpus), context=64)
    )
