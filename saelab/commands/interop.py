"""Commands for working beyond one run and one format: import, export (and the activation cache)."""

from __future__ import annotations


def cmd_import(a) -> None:
    from ..sae.convert import import_saes

    for f in import_saes(a.src, a.out, overwrite=a.overwrite, norm_scaling_factor=a.norm_scaling_factor,
                         prefix=a.prefix, model=a.model, context=a.context):
        print(f)


def cmd_export(a) -> None:
    from ..sae.convert import export_saes

    for f in export_saes(a.sae_dirs, a.format, a.out, overwrite=a.overwrite, prefix=a.prefix):
        print(f)


def cmd_cache(a) -> None:
    from ..options import build_config
    from ..activations.disk_cache import CacheConfig, cache_summary, write_cache

    cfg = build_config(CacheConfig, a, a.config)
    print(cache_summary(write_cache(cfg)))


def cmd_scaling(a) -> None:
    from ..options import build_config
    from ..study.scaling import ScalingConfig, run_scaling

    cfg = build_config(ScalingConfig, a, a.config)
    r = run_scaling(cfg)
    for name, f in r["fits"].items():
        if f["alpha"] is not None:
            print(f"{name}: FVU = {f['a']:.4g} * x^-{f['alpha']:.4f}  (r2 {f['r2']:.3f}, {f['points']} points)")
    print(f"{cfg.out}/scaling.json, {cfg.out}/scaling.png")


def register(sub) -> None:
    from ..options import add_config_command
    from ..study.scaling import ScalingConfig
    from ..activations.disk_cache import CacheConfig

    add_config_command(sub, "scaling", ScalingConfig, cmd_scaling, help="scaling laws: train a latents x tokens grid, fit FVU power laws, plot",
                       description="Caches the activations once, trains one TopK SAE per (latents, tokens) grid point "
                                   "from the cache, evaluates held-out FVU in one pass, fits FVU power laws in "
                                   "latents, tokens and compute (frontier), writes scaling.json and scaling.png.")

    add_config_command(sub, "cache-activations", CacheConfig, cmd_cache, help="run the LM once and store hookpoint activations on disk",
                       description="Writes sharded float32 .npy activations (memory-mappable; sinks/outliers left "
                                   "out as in training) and manifest.json. Train from it with "
                                   "`saelab train --from-activations DIR` (no LM needed).")

    i = sub.add_parser("import", help="convert SAELens / sparsify SAEs (folder or hub id) into saelab folders",
                       description="SRC is a SAELens folder (cfg.json + sae_weights.safetensors), a sparsify folder "
                                   "(cfg.json + sae.safetensors) or a folder of such folders, or a Hugging Face hub "
                                   "id owner/repo[/sub/folder] (needs internet).")
    i.add_argument("src")
    i.add_argument("--out", required=True, help="saelab SAE folder (one SAE) or parent folder (several)")
    i.add_argument("--model", help="model spec to record for eval (default: the model name in the foreign cfg)")
    i.add_argument("--context", type=int, help="context size to record (default: the foreign cfg's, else 256)")
    i.add_argument("--norm-scaling-factor", type=float,
                   help="SAELens normalize_activations=expected_average_only_in: the factor to fold in")
    i.add_argument("--prefix", default="model.",
                   help="sparsify hookpoints are relative to model.base_model; this prefix makes them module names")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(fn=cmd_import)

    e = sub.add_parser("export", help="write saelab SAE folders in SAELens or sparsify layout")
    e.add_argument("sae_dirs", nargs="+")
    e.add_argument("--format", required=True, choices=["saelens", "sparsify"])
    e.add_argument("--out", required=True, help="SAELens: the SAE folder (or a parent for several); "
                                                "sparsify: the run folder that gets one folder per hookpoint")
    e.add_argument("--prefix", default="model.", help="stripped from hookpoints for sparsify folder names")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(fn=cmd_export)
