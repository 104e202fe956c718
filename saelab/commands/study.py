"""Study commands over many SAEs: sweep (grid of loss type x k / coefficient), pareto (the plots of
Braun et al. 2024 from evaluated folders), compare (decoder geometry of two dictionaries), seeds (latents
matched across seeds), scaling (latents x tokens grid with power-law fits). Training itself is `saelab train` (commands/train.py)."""

from __future__ import annotations

from pathlib import Path

from ..options import add_config_command, add_dataclass_options, build_config, config_keys


def cmd_sweep(a) -> None:
    from ..study.sweep import SweepConfig, sweep
    from ..train.config import TrainConfig

    cfg = build_config(SweepConfig, a, a.config, other_keys=config_keys(TrainConfig))  # one --config file for both
    base = build_config(TrainConfig, a, a.config, other_keys=config_keys(SweepConfig), out=a.out)
    rec = sweep(base, cfg)
    print(f"\nsweep done: {len(rec['runs'])} run(s) in {base.out}; next: saelab pareto {base.out}")


def cmd_pareto(a) -> None:
    from ..study.pareto import ParetoConfig, pareto

    cfg = build_config(ParetoConfig, a, a.config)
    res = pareto(cfg)
    out = cfg.out_dir()
    print(
        f"{len(res['points'])} SAEs; wrote {out}/pareto.png, pareto.csv" + (", matched.csv" if res["matched"] else "")
    )
    for r in res["matched"]:
        print(
            "  CE +{:.4f}: ".format(r["ce_increase"])
            + "  ".join(f"{k.removesuffix('_l0')} L0 {v:.1f}" for k, v in r.items() if k.endswith("_l0"))
            + "  |  "
            + "  ".join(f"{k.removesuffix('_alive')} alive {v:.0f}" for k, v in r.items() if k.endswith("_alive"))
        )


def cmd_compare(a) -> None:
    from ..study.compare import CompareConfig, compare_folders

    r = compare_folders(build_config(CompareConfig, a, a.config))
    for key in ("cross_max_cosine", "within_a_max_cosine"):
        s = r[key]
        print(
            f"{key}: n={s['n']} mean {s['mean']:.3f} median {s['median']:.3f} p10 {s['p10']:.3f} "
            f"p90 {s['p90']:.3f} >0.9: {100 * s['frac_above_0.9']:.1f}%"
        )
    print(f"alive: A {r['alive_a']}/{r['d_sae_a']}, B {r['alive_b']}/{r['d_sae_b']}")


def cmd_seeds(a) -> None:
    from ..study.seeds import SeedsConfig, seed_stability

    r = seed_stability(build_config(SeedsConfig, a, a.config))
    need = "decoder cosine" + (" and activation correlation" if r["corr_threshold"] is not None else "")
    print(f"{r['site']}: fraction of A's latents matched in B ({need}), {r['tokens']} tokens")
    for p in r["pairs"]:
        bands = p.get("bands", {})
        shown = "  ".join(
            f"{k} {100 * v['frac_matched']:.0f}% (n={v['n']})" for k, v in bands.items() if v["n"] and k != "dead"
        )
        dead = f"  dead: {bands['dead']['n']}" if bands else ""
        al = p["all"]
        both = f"{100 * al.get('frac_matched', 0.0):.1f}%"
        if bands:  # the cosine alone too: over few fires a correlation is noise
            both += f" (decoder alone {100 * al.get('frac_matched_decoder', 0.0):.1f}%)"
        print(f"  {p['a']} -> {p['b']}: {both}  {shown}{dead}".rstrip())
    print(f"mean over pairs {100 * r['mean_frac_matched']:.1f}%; wrote {Path(r['out']) / 'seeds.json'}")


def cmd_scaling(a) -> None:
    from ..study.scaling import ScalingConfig, run_scaling

    cfg = build_config(ScalingConfig, a, a.config)
    r = run_scaling(cfg)
    for name, f in r["fits"].items():
        if f["alpha"] is not None:
            print(f"{name}: FVU = {f['a']:.4g} * x^-{f['alpha']:.4f}  (r2 {f['r2']:.3f}, {f['points']} points)")
    print(f"{cfg.out}/scaling.json, {cfg.out}/scaling.png")


def register(sub) -> None:
    from ..study.compare import CompareConfig
    from ..study.pareto import ParetoConfig
    from ..study.scaling import ScalingConfig
    from ..study.seeds import SeedsConfig
    from ..study.sweep import SweepConfig
    from ..train.config import TrainConfig

    s = add_config_command(
        sub,
        "sweep",
        SweepConfig,
        cmd_sweep,
        help="train + evaluate a grid of loss types x k (or sparsity coefficient); resumable",
        description="One training run per loss type (its values of --k / --sparsity-coeff share "
        "each forward; --separate: one run per point), then held-out evaluation with "
        "alive latents and later-layer FVU. Rerun the same command to resume.",
    )
    add_dataclass_options(s, TrainConfig, skip=("loss", "resume", "overwrite"))

    add_config_command(
        sub,
        "pareto",
        ParetoConfig,
        cmd_pareto,
        help="L0 / alive latents vs CE loss increase, one curve per loss type (PNG + CSV)",
    )
    add_config_command(
        sub,
        "compare",
        CompareConfig,
        cmd_compare,
        help="decoder geometry of SAE A against SAE B (max cosine per alive latent)",
    )
    add_config_command(
        sub,
        "seeds",
        SeedsConfig,
        cmd_seeds,
        help="seed stability: fraction of latents matched between dictionaries at one site, by frequency band",
        description="For every ordered pair (A, B) of the folders: the fraction of A's alive latents whose nearest "
        "decoder direction in B has cosine >= --cos-threshold and whose activations correlate >= --corr-threshold "
        "with it on the same held-out tokens, overall and by A's density band. Seeds of one configuration, or "
        "different architectures / sparsities at one site.",
    )
    add_config_command(
        sub,
        "scaling",
        ScalingConfig,
        cmd_scaling,
        help="scaling laws: train a latents x tokens grid, fit FVU power laws, plot",
        description="Caches the activations once, trains one TopK SAE per (latents, tokens) grid point "
        "from the cache, evaluates held-out FVU in one pass, fits FVU power laws in "
        "latents, tokens and compute (frontier), writes scaling.json and scaling.png.",
    )
