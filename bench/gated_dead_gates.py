"""Why a gated SAE's latents are dead: for each folder, on held-out positions of the embedded corpus,
the fraction of latents that never fire, whether any of their gates ever opens (pi_gate > 0), and
how far the gates stay from opening (median over dead latents of max pi_gate).

    python bench/gated_dead_gates.py SAE_DIR... [--rows 24]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saelab.data import load_token_rows
from saelab.models import collect_activations, load_model
from saelab.sae.folder import open_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sae_dirs", nargs="+")
    ap.add_argument("--rows", type=int, default=24, help="held-out rows of 256 tokens (default 24)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folders = [open_sae(Path(d)) for d in a.sae_dirs]
    bad = [str(f.path) for f in folders if f.sae.cfg.arch != "gated"]
    if bad:
        raise SystemExit(f"not gated SAEs: {', '.join(bad)}")
    lm = load_model(folders[0].provenance.model_spec)
    rows = load_token_rows("builtin", lm.tokenizer, 256)
    tokens = torch.as_tensor(rows.tokens[rows.heldout_rows[: a.rows]]).long()
    with torch.no_grad():
        acts = collect_activations(lm.model, tokens, sorted({f.sae.cfg.hookpoint for f in folders}))
    for f in folders:
        sae = f.sae
        x = acts[sae.cfg.hookpoint][:, 1:].reshape(-1, sae.cfg.d_in)  # position 0 is the attention sink
        with torch.no_grad():
            gate = sae.preacts(sae.encoder_input(x))  # pi_gate
            mag = (gate - sae.b_enc) * sae.r_mag.exp() + sae.b_mag  # pi_mag: the same product, its own scale and bias
            dead = ~((gate > 0) & (mag > 0)).any(0)
        opens = (gate[:, dead] > 0).any(0).float().mean().item() if dead.any() else float("nan")
        gap = gate[:, dead].max(0).values.median().item() if dead.any() else float("nan")
        print(
            f"{f.path}: {len(x):,} positions, dead {dead.float().mean().item():.1%}, "
            f"dead with a gate that ever opens {opens:.1%}, median max pi_gate of dead {gap:+.3f}"
        )


if __name__ == "__main__":
    main()
