"""`saelab bench`: the offline evaluation suite (core, sparse probing, absorption, autointerp,
synthetic) on SAE folders at one site, with baselines run through the same code. The options are the
fields of BenchConfig (evaluate/bench/config.py), which the Python API's `bench` takes too."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_bench(a) -> None:
    from ..evaluate.bench.config import BenchConfig
    from ..evaluate.bench.run import bench
    from ..interpret.bench_summary import autointerp_summary

    cfg = build_config(BenchConfig, a, a.config)
    # the interpretation run is read (and checked) before any model loads; evaluation does not import interpret
    bench(cfg, interp_summary=autointerp_summary(cfg.interp) if cfg.interp else None)


def register(sub) -> None:
    from ..evaluate.bench.config import BenchConfig

    add_config_command(
        sub,
        "bench",
        BenchConfig,
        cmd_bench,
        help="offline evaluation suite: core, sparse probing, absorption, autointerp, synthetic; "
        "baselines through the same code (docs/EVAL.md)",
    )
