"""End-to-end SAE commands: sweep (grid of loss type x k / coefficient), pareto (the plots of
Braun et al. 2024 from evaluated folders), compare (decoder geometry of two dictionaries).
Training itself is `saelab train --loss local|e2e|e2e+ds` (commands/core.py)."""

from __future__ import annotations

from ..options import add_dataclass_options, build_config


def cmd_sweep(a) -> None:
    from ..study.sweep import run_sweep
    from ..train.config import TrainConfig

    base = build_config(TrainConfig, a, a.config, out=a.out)
    rec = run_sweep(base, a.out, a.losses, separate=a.separate, eval_tokens=a.eval_tokens,
                    eval_ce_tokens=a.eval_ce_tokens)
    print(f"\nsweep done: {len(rec['runs'])} run(s) in {a.out}; next: saelab pareto {a.out}")


def cmd_pareto(a) -> None:
    from pathlib import Path

    from ..study.pareto import run_pareto

    out = a.out or str(Path(a.folders[0]) / "pareto")
    res = run_pareto(a.folders, out, overwrite=a.overwrite, title=a.title)
    print(f"{len(res['points'])} SAEs; wrote {out}/pareto.png, pareto.csv" + (", matched.csv" if res["matched"] else ""))
    for r in res["matched"]:
        print("  CE +{:.4f}: ".format(r["ce_increase"]) + "  ".join(
            f"{k.removesuffix('_l0')} L0 {v:.1f}" for k, v in r.items() if k.endswith("_l0")) + "  |  " + "  ".join(
            f"{k.removesuffix('_alive')} alive {v:.0f}" for k, v in r.items() if k.endswith("_alive")))


def cmd_compare(a) -> None:
    from ..study.compare import compare

    r = compare(a.a, a.b, out=a.out, tokens=a.tokens, model=a.model, corpus=a.corpus, threads=a.threads,
                overwrite=a.overwrite)
    for key in ("cross_max_cosine", "within_a_max_cosine"):
        s = r[key]
        print(f"{key}: n={s['n']} mean {s['mean']:.3f} median {s['median']:.3f} p10 {s['p10']:.3f} "
              f"p90 {s['p90']:.3f} >0.9: {100 * s['frac_above_0.9']:.1f}%")
    print(f"alive: A {r['alive_a']}/{r['d_sae_a']}, B {r['alive_b']}/{r['d_sae_b']}")


def cmd_eval_e2e(a) -> None:
    from ..study.sweep import evaluate_saes

    for d, r in zip(a.sae_dirs, evaluate_saes(a.sae_dirs, a.tokens, a.ce_tokens, a.threads, a.overwrite,
                                                        a.device)):
        later = "  ".join(f"{k.rsplit('.', 1)[-1]}:{v:.3f}" for k, v in r["later_fvu"].items())
        print(f"{d}\n  L0 {r['l0']:.1f}  alive {r['alive']}  FVU {r['fvu']:.4f}  KL {r['kl']:.4f}  "
              f"CE +{r['ce_increase']:.4f}\n  later-layer FVU (block:FVU) {later}")


def register(sub) -> None:
    from ..train.config import TrainConfig

    s = sub.add_parser("sweep", help="train + evaluate a grid of loss types x k (or sparsity coefficient); resumable",
                       description="One training run per loss type (its values of --k / --sparsity-coeff share each "
                                   "forward; --separate: one run per point), then held-out evaluation with alive "
                                   "latents and later-layer FVU. Rerun the same command to resume.")
    s.add_argument("--config", help="JSON or TOML file with option values (command line wins)")
    s.add_argument("--losses", nargs="+", default=["local", "e2e", "e2e+ds"], help="loss types (default: all three)")
    s.add_argument("--separate", action="store_true", help="one run folder per grid point (no shared forwards)")
    s.add_argument("--eval-tokens", type=int, default=50_000, help="held-out tokens for FVU / L0 / alive")
    s.add_argument("--eval-ce-tokens", type=int, default=8192, help="held-out tokens for KL / CE / later-layer FVU")
    add_dataclass_options(s, TrainConfig, skip=("loss", "resume", "overwrite"))
    s.set_defaults(fn=cmd_sweep)

    e = sub.add_parser("eval-e2e", help="saelab eval + alive latents + FVU at every later layer (SAE spliced in)")
    e.add_argument("sae_dirs", nargs="+", help="SAE folders of one model and corpus")
    e.add_argument("--tokens", type=int, default=50_000, help="held-out tokens for FVU / L0 / alive")
    e.add_argument("--ce-tokens", type=int, default=8192, help="held-out tokens for KL / CE / later-layer FVU")
    e.add_argument("--threads", type=int)
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    e.add_argument("--overwrite", action="store_true", help="replace existing metrics.json files")
    e.set_defaults(fn=cmd_eval_e2e)

    p = sub.add_parser("pareto", help="L0 / alive latents vs CE loss increase, one curve per loss type (PNG + CSV)")
    p.add_argument("folders", nargs="+", help="sweep folders or SAE folders with metrics.json")
    p.add_argument("--out", help="output folder (default: FIRST/pareto)")
    p.add_argument("--title")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_pareto)

    c = sub.add_parser("compare", help="decoder geometry of SAE A against SAE B (max cosine per alive latent)")
    c.add_argument("a", help="SAE folder A")
    c.add_argument("b", help="SAE folder B (same site)")
    c.add_argument("--out", help="output folder (default: A/compare_<B name>)")
    c.add_argument("--tokens", type=int, default=50_000, help="held-out tokens to find alive latents (0: all latents)")
    c.add_argument("--model", help="override the model recorded in A")
    c.add_argument("--corpus", help="override the corpus recorded in A")
    c.add_argument("--threads", type=int)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(fn=cmd_compare)
