"""`saelab bench`: the offline evaluation suite (core, sparse probing, absorption, autointerp,
synthetic) on SAE folders at one site, with baselines run through the same code. The options are the
fields of BenchConfig (evaluate/bench/config.py), which the Python API's `bench` takes too."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_bench(a) -> None:
    from ..api.stages import BenchConfig, bench

    bench(build_config(BenchConfig, a, a.config))  # --interp is summarised there, before any model loads


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
