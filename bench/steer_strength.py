"""Which default steering strength keeps text fluent: clamp each of the top-density features of an
SAE to 0.5 / 1 / 2 / 4 x its max activation and count degenerate continuations (empty, no letters,
or repetitive; features/steer.py `degenerate`) and unchanged ones (steering did nothing).

    python bench/steer_strength.py --sae RUN/SAE [--features 8] [--tokens 8192] [--new-tokens 20] [--threads 1]
    python bench/steer_strength.py --rescore RESULT.json    # recount a saved run with today's `degenerate`

Greedy decoding, seed 0, the same three prompts for every feature. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["My favourite hobby is", "Let me tell you about", "The weather today is"]


def main() -> None:
    from saelab.features.steer import FeatureEdit
    from saelab.features.steering import SWEEP, SteeringRequest, run_steering, sink_positions
    from saelab.sae.folder import open_sae
    from saelab.view.feature_store import ensure_cache

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", help="SAE folder (required unless --rescore)")
    ap.add_argument("--rescore", help="a saved result: recount its samples with the current `degenerate` and print")
    ap.add_argument("--features", type=int, default=8, help="top-density features to steer (default 8)")
    ap.add_argument(
        "--tokens", type=int, default=8192, help="held-out tokens for densities and max activations (default 8192)"
    )
    ap.add_argument("--new-tokens", type=int, default=20, help="tokens generated per prompt (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = ap.parse_args()
    if a.rescore:
        from saelab.features.steer import degenerate

        d = json.loads(Path(a.rescore).read_text())
        for x in SWEEP:
            k = f"x{x:g}"
            d["per_strength"][f"{x:g}x"] = {
                "degenerate": sum(degenerate(s[k]) is not None for s in d["samples"]),
                "unchanged": sum(s[k] == s["unsteered"] for s in d["samples"]),
                "n": len(d["samples"]),
            }
        d["unsteered_degenerate"] = sum(degenerate(s["unsteered"]) is not None for s in d["samples"])
        print(json.dumps({k: v for k, v in d.items() if k != "samples"}, indent=1))
        return
    if not a.sae:
        ap.error("--sae is required")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    folder = open_sae(Path(a.sae))
    lm = folder.open_model()
    lc, name = ensure_cache(Path(a.sae), folder.sae.cfg.d_sae, None, a.tokens, progress=False, loaded_model=lm)
    freq, mx = lc.firing_frequency(name), lc.max_activation(name)
    feats = [int(j) for j in np.argsort(-freq, kind="stable")[: a.features]]
    per = {x: {"degenerate": 0, "unchanged": 0, "n": 0} for x in SWEEP}
    samples = []
    for j in feats:
        req = SteeringRequest(
            PROMPTS, [FeatureEdit(j, "clamp", 1.0, relative=True)], max_new_tokens=a.new_tokens, strengths=list(SWEEP)
        )
        res = run_steering(
            req, lm.model, lm.tokenizer, folder.sae, torch.from_numpy(mx.copy()), sink_positions(folder.cfg)
        )
        for r in res.results:
            for v in r["sweep"]:
                d = per[v["strength"]]
                d["n"] += 1
                d["degenerate"] += v["degenerate"] is not None
                d["unchanged"] += v["text"] == r["unsteered"]
            samples.append(
                {
                    "feature": j,
                    "density": float(freq[j]),
                    "max_act": float(mx[j]),
                    "prompt": r["prompt"],
                    "unsteered": r["unsteered"],
                    **{f"x{v['strength']:g}": v["text"] for v in r["sweep"]},
                }
            )
    print(
        json.dumps(
            {
                "sae": a.sae,
                "features": feats,
                "tokens": a.tokens,
                "new_tokens": a.new_tokens,
                "per_strength": {f"{x:g}x": d for x, d in per.items()},
                "wall_s": round(time.time() - t0, 1),
                "samples": samples,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
