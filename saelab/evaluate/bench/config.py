"""What `saelab bench` (and `bench` in the Python API) takes: one dataclass whose fields are the
command's options. Checked here, before any folder or model opens."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError
from ...options import (
    check_device,
    check_types,
    device_option,
    need_at_least,
    opt,
    out_option,
    overwrite_option,
    threads_option,
)
from .dictionaries import check_baselines
from .results import DEFAULT_METRICS, METRICS


@dataclass(kw_only=True)
class BenchConfig:
    sae_dirs: list[str] = opt(help="SAE folders at one site of one model", positional=True)
    out: str = out_option("report folder (JSON per metric, report.md/html, bench.png)")
    metrics: list[str] | None = opt(
        None, f"{' '.join(METRICS)} (none: {' '.join(DEFAULT_METRICS)}, plus autointerp with --interp)"
    )
    baselines: list[str] = opt(default_factory=list, help="neurons residual pca random: bases run as dictionaries")
    interp: str | None = opt(None, "an interpretation run (saelab explain/score output) to summarise")
    tasks: str | None = opt(None, 'extra probing task: JSONL of {"text", "label"} records')
    tokens: int = opt(20_000, "held-out tokens for the core reconstruction metrics")
    ce_tokens: int = opt(1024, "held-out tokens for core KL / CE (full forwards)")
    task_scale: float = opt(1.0, "multiplies the examples of the built-in tasks")
    seed: int = opt(0, "seed of task sampling and splits")
    threads: int | None = threads_option()
    device: str = device_option()
    overwrite: bool = overwrite_option("an existing report in --out")

    def validate(self, has_interp: bool | None = None) -> None:
        """Names, ranges and the metrics' needs; `has_interp`: an interpretation summary was given
        (None: --interp names a run, which the command summarises)."""
        has_interp = self.interp is not None if has_interp is None else has_interp
        check_types(self)
        bad = [m for m in self.metrics or () if m not in METRICS]
        if bad:
            raise UserError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
        check_baselines(self.baselines)
        if "autointerp" in self.chosen_metrics(has_interp) and not has_interp:
            raise UserError("metric autointerp needs --interp RUN_DIR (an `saelab explain` / `saelab score` run)")
        if self.tokens < 1 or self.ce_tokens < 0:
            raise UserError("--tokens must be positive and --ce-tokens non-negative")
        need_at_least(self, 1, "threads")
        if self.tasks and "probing" not in self.chosen_metrics(has_interp):
            raise UserError("--tasks adds a probing task; include `probing` in --metrics")
        if not self.sae_dirs:
            raise UserError("bench needs at least one SAE folder")
        check_device(self.device)

    def chosen_metrics(self, has_interp: bool) -> list[str]:
        """--metrics (each once, in order), or the default set, plus autointerp when a run is summarised."""
        if self.metrics:
            return list(dict.fromkeys(self.metrics))
        return list(DEFAULT_METRICS) + (["autointerp"] if has_interp else [])
