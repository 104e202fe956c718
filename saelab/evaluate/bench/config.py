"""What `saelab bench` (and `bench` in the Python API) takes: one dataclass whose fields are the
command's options. Checked here, before any folder or model opens."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError
from ...option_checks import check_device, check_types, need_at_least, need_positive
from ...options import device_option, opt, out_option, overwrite_option, threads_option
from . import registry
from .dictionaries import check_baselines
from .steering_concepts import CONCEPTS, check_concepts


def _metrics_help() -> str:
    """--metrics' help, from the registry: every name, the default set, those --interp adds."""
    ms = registry.all_metrics()
    interp = " ".join(m.name for m in ms if m.needs_interp)
    return (
        " ".join(m.name for m in ms)
        + f" (none: {' '.join(m.name for m in ms if m.default)}"
        + (f", plus {interp} with --interp)" if interp else ")")
    )


@dataclass(kw_only=True)
class BenchConfig:
    """`saelab bench` / `saelab.bench`: the offline evaluation suite (core metrics, sparse probing,
    absorption, ...) over SAE folders of one site, with baselines (neurons, PCA, ...) run as dictionaries."""

    sae_dirs: list[str] = opt(help="SAE folders at one site of one model", positional=True)
    out: str = out_option("report folder (JSON per metric, report.md/html, bench.png)")
    metrics: list[str] | None = opt(None, _metrics_help())
    baselines: list[str] = opt(default_factory=list, help="neurons residual pca random: bases run as dictionaries")
    interp: str | None = opt(None, "an interpretation run (saelab explain/score output) to summarise")
    tasks: str | None = opt(None, 'extra probing task: JSONL of {"text", "label"} records')
    tokens: int = opt(20_000, "held-out tokens for the core reconstruction metrics")
    ce_tokens: int = opt(1024, "held-out tokens for core KL / CE (full forwards)")
    task_scale: float = opt(1.0, "multiplies the examples of the built-in tasks")
    seed: int = opt(0, "seed of task sampling and splits")
    steer_concepts: list[str] | None = opt(None, f"steering metric's concepts: {' '.join(CONCEPTS)}", shown="all")
    threads: int | None = threads_option()
    device: str = device_option()
    overwrite: bool = overwrite_option("an existing report in --out")

    def validate(self, has_interp: bool | None = None) -> None:
        """Names, ranges and the metrics' needs; `has_interp`: an interpretation summary was given
        (None: --interp names a run, which the command summarises)."""
        has_interp = self.interp is not None if has_interp is None else has_interp
        check_types(self)
        known = registry.names()
        bad = [m for m in self.metrics or () if m not in known]
        if bad:
            raise UserError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(known)}")
        check_baselines(self.baselines)
        for name in self.chosen_metrics(has_interp):
            if registry.metric(name).needs_interp and not has_interp:
                raise UserError(f"metric {name} needs --interp RUN_DIR (an `saelab explain` / `saelab score` run)")
        if self.tokens < 1 or self.ce_tokens < 0:
            raise UserError("--tokens must be positive and --ce-tokens non-negative")
        need_at_least(self, 1, "threads")
        need_at_least(self, 0, "seed")
        need_positive(self, "task_scale")
        if self.tasks and "probing" not in self.chosen_metrics(has_interp):
            raise UserError("--tasks adds a probing task; include `probing` in --metrics")
        if self.steer_concepts:
            check_concepts(self.steer_concepts)
            if "steering" not in self.chosen_metrics(has_interp):
                raise UserError(
                    "--steer-concepts chooses the steering metric's concepts; include `steering` in --metrics"
                )
        if not self.sae_dirs:
            raise UserError("bench needs at least one SAE folder")
        check_device(self.device)

    def chosen_metrics(self, has_interp: bool) -> list[str]:
        """--metrics (each once, in order), or the registry's default set, plus the metrics that read an
        interpretation run when one is summarised."""
        if self.metrics:
            return list(dict.fromkeys(self.metrics))
        return [m.name for m in registry.all_metrics() if m.default or (m.needs_interp and has_interp)]
