"""Study commands over many SAEs: sweep (grid of loss type x k / coefficient), pareto (the plots of
Braun et al. 2024 from evaluated folders), compare (decoder geometry of two dictionaries), scaling
(latents x tokens grid with power-law fits). Training itself is `saelab train` (commands/train.py)."""

from __future__ import annotations

from ..options import THREADS_HELP, add_config_command, add_dataclass_options, build_config


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

    r = compare(a.a, a.b, out=a.out, tokens=a.tokens, model=a.model, corpus=a.corpus,
                overwrite=a.overwrite)
    for key in ("cross_max_cosine", "within_a_max_cosine"):
        s = r[key]
        print(f"{key}: n={s['n']} mean {s['mean']:.3f} median {s['median']:.3f} p10 {s['p10']:.3f} "
              f"p90 {s['p90']:.3f} >0.9: {100 * s['frac_above_0.9']:.1f}%")
    print(f"alive: A {r['alive_a']}/{r['d_sae_a']}, B {r['alive_b']}/{r['d_sae_b']}")


def cmd_scaling(a) -> None:
    from ..study.scaling import ScalingConfig, run_scaling

    cfg = build_config(ScalingConfig, a, a.config)
    r = run_scaling(cfg)
    for name, f in r["fits"].items():
        if f["alpha"] is not None:
            print(f"{name}: FVU = {f['a']:.4g} * x^-{f['alpha']:.4f}  (r2 {f['r2']:.3f}, {f['points']} points)")
    print(f"{cfg.out}/scaling.json, {cfg.out}/scaling.png")


def register(sub) -> None:
    from ..study.scaling import ScalingConfig
    from ..train.config import TrainConfig

    s = sub.add_parser("sweep", help="train + evaluate a grid of loss types x k (or sparsity coefficient); resumable",
                       description="One training run per loss type (its values of --k / --sparsity-coeff share each "
                                   "forward; --separate: one run per point), then held-out evaluation with alive "
                                   "latents and later-layer FVU. Rerun the same command to resume.")
    s.add_argument("--config", help="JSON or TOML file with option values (command line wins; default: none)")
    s.add_argument("--losses", nargs="+", default=["local", "e2e", "e2e+ds"], help="loss types (default: all three)")
    s.add_argument("--separate", action="store_true", help="one run folder per grid point (no shared forwards)")
    s.add_argument("--eval-tokens", type=int, default=50_000, help="held-out tokens for FVU / L0 / alive")
    s.add_argument("--eval-ce-tokens", type=int, default=8192, help="held-out tokens for KL / CE / later-layer FVU")
    add_dataclass_options(s, TrainConfig, skip=("loss", "resume", "overwrite"))
    s.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("pareto", help="L0 / alive latents vs CE loss increase, one curve per loss type (PNG + CSV)")
    p.add_argument("folders", nargs="+", help="sweep folders, SAE folders with metrics.json, or an earlier pareto.json")
    p.add_argument("--out", help="output folder (default: FIRST/pareto)")
    p.add_argument("--title", help="plot title (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pareto.png / pareto.csv")
    p.set_defaults(fn=cmd_pareto)

    c = sub.add_parser("compare", help="decoder geometry of SAE A against SAE B (max cosine per alive latent)")
    c.add_argument("a", help="SAE folder A")
    c.add_argument("b", help="SAE folder B (same site)")
    c.add_argument("--out", help="output folder (default: A/compare_<B name>)")
    c.add_argument("--tokens", type=int, default=50_000, help="held-out tokens to find alive latents (0: all latents)")
    c.add_argument("--model", help="override the model recorded in A and B (they must agree otherwise)")
    c.add_argument("--corpus", help="override the corpus recorded in A and B (default: their held-out rows)")
    c.add_argument("--threads", type=int, help=THREADS_HELP)
    c.add_argument("--overwrite", action="store_true", help="replace an existing compare.json")
    c.set_defaults(fn=cmd_compare)

    add_config_command(sub, "scaling", ScalingConfig, cmd_scaling, help="scaling laws: train a latents x tokens grid, fit FVU power laws, plot",
                       description="Caches the activations once, trains one TopK SAE per (latents, tokens) grid point "
                                   "from the cache, evaluates held-out FVU in one pass, fits FVU power laws in "
                                   "latents, tokens and compute (frontier), writes scaling.json and scaling.png.")
