"""Core commands: hookpoints, train, eval."""

from __future__ import annotations

import time
from pathlib import Path

from ..options import add_config_command, build_config


def cmd_hookpoints(a) -> None:
    from ..models import candidate_hookpoints, hookpoint_widths, load_model

    lm = load_model(a.model)
    sites = candidate_hookpoints(lm.model)
    widths = hookpoint_widths(lm.model, [n for n, _ in sites])
    print(f"# {lm.name}: {len(sites)} hookpoints (name, kind, width). Any module name also works; "
          f"append ':input' for a module's input.")
    for name, kind in sites:
        print(f"{name}\t{kind}\t{widths[name]}")


def cmd_train(a) -> None:
    from ..train.config import TrainConfig
    from ..train.loop import train

    cfg = build_config(TrainConfig, a, a.config)
    t = time.time()
    folders = train(cfg)  # one process, or this rank's share under torchrun
    print(f"\ntrained {len(folders)} SAE(s) in {time.time() - t:.0f} s; run manifest: {Path(cfg.out) / 'manifest.json'}")
    for f in folders:
        print(f"  {f}")


def cmd_eval(a) -> None:
    from ..evaluate.run import run_eval

    run_eval(a.sae_dirs, tokens=a.tokens, ce_tokens=a.ce_tokens, out=a.out, corpus=a.corpus, model=a.model,
             threads=a.threads, overwrite=a.overwrite, device=a.device)


def register(sub) -> None:
    from ..train.config import TrainConfig

    h = sub.add_parser("hookpoints", help="list the hookable sites of a model with their widths")
    h.add_argument("--model", default="embedded", help="embedded | local folder | .gguf file | hub id")
    h.set_defaults(fn=cmd_hookpoints)

    add_config_command(sub, "train", TrainConfig, cmd_train, help="train SAEs/transcoders on a model's activations",
                       description="Train one SAE per (hookpoint, k or sparsity value, lr) from one LM forward. "
                                   "A hookpoint 'A->B' trains a transcoder from site A to site B. Globs: '*' "
                                   "matches within one dotted name segment, '**' across segments.")

    e = sub.add_parser("eval", help="evaluate SAE folders on held-out tokens")
    e.add_argument("sae_dirs", nargs="+", help="SAE folders (saelab format); several share the clean passes")
    e.add_argument("--tokens", type=int, default=100_000, help="held-out tokens for reconstruction metrics")
    e.add_argument("--ce-tokens", type=int, default=16_384, help="held-out tokens for KL / CE metrics (full forwards)")
    e.add_argument("--out", help="metrics file (default: metrics.json inside each SAE folder)")
    e.add_argument("--corpus", help="override the corpus recorded in the SAE folder")
    e.add_argument("--model", help="override the model recorded in the SAE folder")
    e.add_argument("--threads", type=int)
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing metrics file")
    e.set_defaults(fn=cmd_eval)
