"""Issue 13: how much of a skip transcoder's prediction is the linear skip, on held-out tokens.

For each transcoder folder ('A->B'), on the first held-out rows covering --tokens positions (sinks
and outliers left out as in `saelab eval`): FVU of the full prediction, and for a skip transcoder
FVU of the skip path alone (x @ W_skip.T + b_dec: the least-squares-started linear map); the skip's
share of the variance is 1 - that FVU, the latents' share what the full prediction adds on top.

    python bench/skip_share.py TC_FOLDER SKIP_TC_FOLDER [--tokens 32768] [--threads 2]
"""

from __future__ import annotations

import argparse
import json

import torch

from saelab.evaluate.metrics import batches, heldout_selection, sae_sink_mask, sink_config_of
from saelab.models import collect_activations
from saelab.sae.folder import open_sae, open_shared_data
from saelab.sinks import special_ids
from saelab.storage import read_json


def fvu(pred: torch.Tensor, target: torch.Tensor) -> float:
    return ((pred - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()).item()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folders = [open_sae(f) for f in a.folders]
    data = open_shared_data(folders)
    lm, rows = data.lm, data.rows
    special = special_ids(lm.tokenizer)
    sinks = {f.path: sink_config_of(read_json(f.path / "cfg.json")) for f in folders}
    sites = sorted({h for f in folders for h in (f.sae.cfg.hookpoint, f.sae.cfg.out_hookpoint)})
    xs, ys = {f.path: [] for f in folders}, {f.path: [] for f in folders}
    for ids in batches(rows, heldout_selection(rows, a.tokens), 16, "cpu"):
        acts = collect_activations(lm.model, ids, sites)
        for f in folders:
            c = f.sae.cfg
            keep = ~sae_sink_mask(f.sae, sinks[f.path], acts, ids, special)
            xs[f.path].append(acts[c.hookpoint][keep].float())
            ys[f.path].append(acts[c.out_hookpoint][keep].float())
    out = {}
    for f in folders:
        sae, x, y = f.sae, torch.cat(xs[f.path]), torch.cat(ys[f.path])
        rec = {"positions": len(x), "fvu": fvu(sae.reconstruct(x), y), "skip": bool(sae.cfg.skip)}
        if sae.cfg.skip:
            linear = sae.skip_raw(x) + sae.b_dec / sae.out_scale
            rec["fvu_skip_only"] = fvu(linear, y)
            rec["skip_share"] = 1 - rec["fvu_skip_only"]
            rec["latents_share"] = rec["fvu_skip_only"] - rec["fvu"]
        out[str(f.path)] = rec
        print(f"{f.path}: {json.dumps(rec)}")


if __name__ == "__main__":
    main()
