"""Cache throughput next to the bare model forward, measured in one process on the same tokens.

    python bench/interp_cache_throughput.py SAE_DIR [--tokens 32768] [--threads 1]

Times (1) the truncated forward alone (collect_activations up to the SAE's hookpoint and the
neurons' hookpoint), (2) `write_latent_cache` for the SAE + the neurons on the same number of
tokens (forward + encode + sparse records + merge), then (1) again; prints tokens/s of each and
the ratio. Timing on a shared CPU is noisy: compare the ratio, not the absolute numbers."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np
import torch

from saelab.data import load_token_rows
from saelab.features.cache_config import LatentCacheConfig
from saelab.features.latent_cache_writer import write_latent_cache
from saelab.models import collect_activations, load_model
from saelab.sae.folder import load_sae

p = argparse.ArgumentParser()
p.add_argument("sae")
p.add_argument("--tokens", type=int, default=32768)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--neurons", default="model.layers.6.mlp.down_proj:input")
a = p.parse_args()
torch.set_num_threads(a.threads)
sae, cfg = load_sae(a.sae)
lm = load_model(cfg["saelab"].get("model_spec", "embedded"))
ctx = cfg["metadata"]["context_size"]
rows = load_token_rows(cfg["saelab"].get("corpus", "builtin"), lm.tokenizer, ctx)
order = np.concatenate([rows.heldout_rows, rows.train_rows])[: a.tokens // ctx]
toks = torch.from_numpy(np.asarray(rows.tokens[order], dtype=np.int64))


def bare() -> float:
    t = time.time()
    with torch.no_grad():
        for b in range(0, len(toks), 16):
            collect_activations(lm.model, toks[b : b + 16], [sae.cfg.hookpoint, a.neurons])
    return toks.numel() / (time.time() - t)


def cached() -> float:
    out = tempfile.mkdtemp()
    shutil.rmtree(out)
    t = time.time()
    write_latent_cache(LatentCacheConfig(sae_dirs=[a.sae], tokens=a.tokens, out=out, neurons=a.neurons), progress=False)
    tps = toks.numel() / (time.time() - t)
    shutil.rmtree(out)
    return tps


b1 = bare()
c = cached()
b2 = bare()
res = {
    "tokens": int(toks.numel()),
    "threads": a.threads,
    "bare_forward_tokens_per_s": [b1, b2],
    "cache_tokens_per_s": c,
    "cache_over_bare": c / ((b1 + b2) / 2),
}
print(json.dumps(res, indent=2))
