"""Evaluation commands: eval (held-out reconstruction, KL / CE), eval-e2e (plus alive latents and
later-layer FVU with the SAE spliced in)."""

from __future__ import annotations

from ..options import DTYPE_HELP, DTYPES, THREADS_HELP


def cmd_eval(a) -> None:
    from ..evaluate.run import run_eval

    run_eval(a.sae_dirs, tokens=a.tokens, ce_tokens=a.ce_tokens, out=a.out, corpus=a.corpus, model=a.model,
             overwrite=a.overwrite, device=a.device, dtype=a.dtype)


def cmd_eval_e2e(a) -> None:
    from ..evaluate.run import run_eval

    for d, r in zip(a.sae_dirs, run_eval(a.sae_dirs, tokens=a.tokens, ce_tokens=a.ce_tokens, overwrite=a.overwrite,
                                         quiet=True, device=a.device, later_layers=True, dtype=a.dtype)):
        later = "  ".join(f"{k.rsplit('.', 1)[-1]}:{v:.3f}" for k, v in r["later_fvu"].items())
        print(f"{d}\n  L0 {r['l0']:.1f}  alive {r['alive']}  FVU {r['fvu']:.4f}  KL {r['kl']:.4f}  "
              f"CE +{r['ce_increase']:.4f}\n  later-layer FVU (block:FVU) {later}")


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate SAE folders on held-out tokens")
    e.add_argument("sae_dirs", nargs="+", help="SAE folders (saelab format); several share the clean passes")
    e.add_argument("--tokens", type=int, default=100_000, help="held-out tokens for reconstruction metrics")
    e.add_argument("--ce-tokens", type=int, default=16_384, help="held-out tokens for KL / CE metrics (full forwards)")
    e.add_argument("--out", help="metrics file (default: metrics.json inside each SAE folder)")
    e.add_argument("--corpus", help="override the corpus recorded in the SAE folder")
    e.add_argument("--model", help="override the model recorded in the SAE folder")
    e.add_argument("--threads", type=int, help=THREADS_HELP)
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    e.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)
    e.add_argument("--overwrite", action="store_true", help="replace an existing metrics file")
    e.set_defaults(fn=cmd_eval)

    e = sub.add_parser("eval-e2e", help="saelab eval + alive latents + FVU at every later layer (SAE spliced in)")
    e.add_argument("sae_dirs", nargs="+", help="SAE folders of one model and corpus")
    e.add_argument("--tokens", type=int, default=50_000, help="held-out tokens for FVU / L0 / alive")
    e.add_argument("--ce-tokens", type=int, default=8192, help="held-out tokens for KL / CE / later-layer FVU")
    e.add_argument("--threads", type=int, help=THREADS_HELP)
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    e.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)
    e.add_argument("--overwrite", action="store_true", help="replace existing metrics.json files")
    e.set_defaults(fn=cmd_eval_e2e)
