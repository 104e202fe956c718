"""The stages as functions over their config dataclasses: what every `saelab` command runs.

Each function takes the dataclass whose fields are its command's options (the same object `saelab
<command>` builds from its flags and `--config` file), runs the stage, prints what the command prints
(unless `quiet` / `progress=False`), and returns a typed result read back from the files it wrote
(api/results.py). The commands (saelab/commands/*.py) only build the config and call these, so a stage
run from Python and from the command line are one implementation.

    from saelab import TrainConfig, train, evaluate, EvalConfig
    run = train(TrainConfig(model="embedded", hookpoints=["model.layers.6"], tokens=2_000_000, out="runs/a"))
    ev = evaluate(EvalConfig(sae_dirs=[str(p) for p in run.dictionaries]))
    ev.to_pandas()[["sae", "fvu", "l0", "ce_increase"]]
"""

from __future__ import annotations

import time
from pathlib import Path

from ..activations.disk_cache import CacheConfig
from ..evaluate.bench.config import BenchConfig
from ..evaluate.run import EvalConfig, EvalE2EConfig
from ..features.cache_config import LatentCacheConfig
from ..interpret.config import ExplainConfig, ScoreConfig
from ..storage import read_json
from ..train.config import TrainConfig
from .latents import LatentCache
from .results import BenchResult, EvalResult, InterpretationRun, TrainResult

__all__ = [
    "BenchConfig",
    "CacheConfig",
    "EvalConfig",
    "EvalE2EConfig",
    "ExplainConfig",
    "LatentCacheConfig",
    "ScoreConfig",
    "TrainConfig",
    "bench",
    "cache_activations",
    "cache_features",
    "evaluate",
    "explain",
    "score",
    "train",
]


def train(cfg: TrainConfig, quiet: bool = False) -> TrainResult:
    """`saelab train`: train one dictionary per (hookpoint, k or sparsity value, lr) from one LM forward
    (or from an activation cache) into the run folder `cfg.out` (one process, or this rank's share under
    torchrun). Returns the run: its dictionary folders and each one's final training statistics.
    `quiet`: no summary line (the training loop's own progress still shows). With `cfg.seeds` (N): N runs
    differing only in the seed, in `cfg.out`/seed-<S>/ (train/seeds.py); `metrics` are then keyed
    "seed-<S>/<dictionary>" and `manifest` is {"seeds": {S: that run's manifest}}."""
    from ..train.loop import train as run_training

    if cfg.seeds:
        return _train_seeds(cfg, quiet)
    t = time.time()
    folders = run_training(cfg)
    manifest_path = Path(cfg.out) / "manifest.json"
    if not quiet:
        print(f"\ntrained {len(folders)} SAE(s) in {time.time() - t:.0f} s; run manifest: {manifest_path}")
        for f in folders:
            print(f"  {f}")
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}  # rank 0 writes it
    final = {name: rec.get("final", {}) for name, rec in manifest.get("saes", {}).items()}
    return TrainResult(Path(cfg.out), [Path(f) for f in folders], final, manifest)


def _train_seeds(cfg: TrainConfig, quiet: bool) -> TrainResult:
    from ..train.seeds import seed_configs, train_seeds

    t = time.time()
    folders = train_seeds(cfg, quiet)
    final, manifests = {}, {}
    for c in seed_configs(cfg):
        path = Path(c.out) / "manifest.json"
        manifests[c.seed] = read_json(path) if path.is_file() else {}  # rank 0 writes it
        for name, rec in manifests[c.seed].get("saes", {}).items():
            final[f"{Path(c.out).name}/{name}"] = rec.get("final", {})
    if not quiet:
        print(f"\ntrained {cfg.seeds} seed(s), {len(folders)} SAE(s), in {time.time() - t:.0f} s under {cfg.out}")
        for f in folders:
            print(f"  {f}")
    return TrainResult(Path(cfg.out), folders, final, {"seeds": manifests})


def cache_activations(cfg: CacheConfig, quiet: bool = False) -> Path:
    """`saelab cache-activations`: run the LM once and store hookpoint activations (float32 [vectors, d]
    shards, or half precision) with a manifest; returns the folder (`TrainConfig(from_activations=...)`
    trains from it with no LM). Prints its summary unless `quiet`."""
    from ..activations.disk_cache import cache_summary, write_cache

    out = write_cache(cfg)
    if not quiet:
        print(cache_summary(out))
    return Path(out)


def evaluate(cfg: EvalConfig | EvalE2EConfig, quiet: bool = False) -> EvalResult:
    """`saelab eval` (an EvalConfig: held-out FVU, MSE, cosine, L0, dead / dense fractions, KL and CE with
    the dictionary spliced in; a replacement folder: per layer, and all layers at once) or `saelab eval-e2e`
    (an EvalE2EConfig: also alive latents and the FVU of every later block). Writes each metrics.json and
    returns what they hold. Prints the command's report unless `quiet`."""
    from ..evaluate.run import evaluate as run_eval
    from ..evaluate.run import evaluate_e2e, metrics_files

    if isinstance(cfg, EvalE2EConfig):
        results = evaluate_e2e(cfg)
        if not quiet:
            for d, r in zip(cfg.sae_dirs, results):
                later = "  ".join(f"{k.rsplit('.', 1)[-1]}:{v:.3f}" for k, v in r["later_fvu"].items())
                print(
                    f"{d}\n  L0 {r['l0']:.1f}  alive {r['alive']}  FVU {r['fvu']:.4f}  KL {r['kl']:.4f}  "
                    f"CE +{r['ce_increase']:.4f}\n  later-layer FVU (block:FVU) {later}"
                )
    else:
        run_eval(cfg, quiet=quiet)
    files = metrics_files(cfg)
    return EvalResult(files, [read_json(f) for f in files])


def bench(cfg: BenchConfig, quiet: bool = False) -> BenchResult:
    """`saelab bench`: the offline evaluation suite (core, sparse probing, absorption, autointerp,
    synthetic) on dictionaries at one site, baselines through the same code; writes `<metric>.json`,
    bench.json, report.md / .html and bench.png under `cfg.out`. `cfg.interp` (an interpretation run) is
    read and summarised before any model loads. Prints progress unless `quiet`."""
    from ..evaluate.bench.run import bench as run_bench
    from ..interpret.bench_summary import autointerp_summary

    # the interpretation run is read (and checked) before any model loads; evaluation does not import interpret
    results = run_bench(cfg, interp_summary=autointerp_summary(cfg.interp) if cfg.interp else None, quiet=quiet)
    out = Path(cfg.out)
    return BenchResult(out, results, read_json(out / "bench.json"))


def cache_features(cfg: LatentCacheConfig, progress: bool = True) -> LatentCache:
    """`saelab cache`: run the model once over `cfg.tokens` tokens and store every active latent of each
    dictionary sparsely (resumable: the same call continues an interrupted run). Returns the cache, open
    (`top_examples`, `density`, `logit_effects`). `progress`: bars and the summary line."""
    from ..features.latent_cache_writer import write_latent_cache

    return LatentCache.open(write_latent_cache(cfg, progress=progress))


def explain(cfg: ExplainConfig, progress: bool = True) -> InterpretationRun:
    """`saelab explain`: draw examples of each chosen latent from a latent cache, explain it (an LLM, or
    `explainer="stats"`: the statistical baseline, no LLM) and append one record per latent to
    `cfg.out`/explanations.jsonl (resumable). Returns the run folder's records."""
    from ..interpret.explain_run import explain as run_explain

    return InterpretationRun.open(run_explain(cfg, progress=progress))


def score(cfg: ScoreConfig, progress: bool = True) -> InterpretationRun:
    """`saelab score`: score the explanations of run `cfg.run` with each scorer (one record per latent
    appended to scores_<scorer>.jsonl; a rerun skips latents already scored). Returns the run's records,
    with `scored` = latents scored by this call per scorer; prints that count when `progress`."""
    from ..interpret.scoring_run import score as run_score

    n = run_score(cfg, progress=progress)
    if progress:
        print("saelab: scored " + ", ".join(f"{k}: {v} latents" for k, v in n.items()) + f" -> {cfg.run}")
    return InterpretationRun.open(cfg.run, scored=n)
