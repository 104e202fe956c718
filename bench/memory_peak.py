"""Peak memory of local TopK training: the formula of docs/SCALE.md next to measured peak RSS.

    nice -n 5 python bench/memory_peak.py --latents 4608 16384 --out .cache/scale/mem [--reuse RUN_DIR ...]

Measures (each in its own process, peak RSS = ru_maxrss): (1) the LM alone (python, torch,
transformers, the model's weights, the token rows and one forward of one batch): the formula's
`base`; (2) `saelab train` of one TopK SAE at model.layers.6 per --latents value. --reuse adds
finished runs (their manifest's peak_rss_mb and config). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from saelab.storage import read_json

BASE = """
import json, resource, numpy as np, torch
torch.set_num_threads(2)
from saelab.models import collect_activations, load_model
from saelab.data import load_token_rows
lm = load_model("embedded")
rows = load_token_rows("builtin", lm.tokenizer, 256)
ids = torch.from_numpy(np.asarray(rows.tokens[rows.train_rows[:{rows}]], dtype=np.int64))
with torch.no_grad():
    collect_activations(lm.model, ids, ["model.layers.6"])
print(json.dumps({{"base_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def formula_mb(base_mb: float, latents: int, d: int, batch: int, buffer_batches: int, tokens: int, aux: bool) -> dict:
    """docs/SCALE.md, memory: the peak is the largest of three phases (MiB; float32 = 4 bytes).
    P = 2 L d (W_enc, W_dec); the SAE's weights and Adam moments (3P) live all the time, the chunk
    (C x d) while its batches train; pre-activations exist only in the forward, gradients (set to
    None after each step) and the step's transient copy only in the backward."""
    mib = 2**20
    chunk = min(buffer_batches * batch, tokens) * d * 4 / mib
    P = 2 * latents * d * 4 / mib
    pre = batch * latents * 4 / mib
    phases = {
        "building a chunk: base + 3 x chunk (parts, concatenation, shuffled copy)": base_mb + 3 * chunk,
        "SAE forward: base + chunk + 3P + B L (pre-activations) + B L (AuxK masked copy, once latents are dead)": base_mb
        + chunk
        + 3 * P
        + pre * (2 if aux else 1),
        "SAE backward/step: base + chunk + 3P + P (gradients) + P (transient)": base_mb + chunk + 5 * P,
    }
    return {"phases_mb": {k: round(v) for k, v in phases.items()}, "total_mb": round(max(phases.values()))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latents", type=int, nargs="*", default=[4608, 16384])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--buffer-batches", type=int, default=8)
    p.add_argument("--reuse", nargs="*", default=[], help="finished run folders to include")
    p.add_argument("--out", default=".cache/scale/mem")
    a = p.parse_args()
    base = json.loads(
        subprocess.run(
            [sys.executable, "-c", BASE.format(rows=a.batch_tokens // 256)], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )["base_rss_mb"]
    runs = [Path(r) for r in a.reuse]
    for L in a.latents:
        out = Path(a.out) / f"L{L}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "saelab.cli",
                "train",
                "--dict-size",
                str(L),
                "--k",
                "32",
                "--tokens",
                str(a.tokens),
                "--batch-tokens",
                str(a.batch_tokens),
                "--buffer-batches",
                str(a.buffer_batches),
                "--hookpoints",
                "model.layers.6",
                "--threads",
                "2",
                "--checkpoint-every",
                str(10**12),
                "--out",
                str(out),
                "--overwrite",
            ],
            check=True,
            capture_output=True,
        )
        runs.append(out)
    res = {"base_rss_mb": round(base), "runs": []}
    for r in runs:
        m = read_json(r / "manifest.json")
        c = m["config"]
        steps = m["steps"]
        f = formula_mb(base, c["latents"], 576, c["batch_tokens"], c["buffer_batches"], c["tokens"], aux=steps > 1)
        res["runs"].append(
            {
                "run": str(r),
                "latents": c["latents"],
                "tokens": m["lm_tokens"],
                "tokens_per_s": round(m["tokens_per_s"], 1),
                "measured_peak_rss_mb": round(m["peak_rss_mb"]),
                "formula_mb": f["total_mb"],
                "phases_mb": f["phases_mb"],
            }
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
