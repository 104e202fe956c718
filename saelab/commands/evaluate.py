"""Evaluation commands: eval (held-out reconstruction, KL / CE), eval-e2e (plus alive latents and
later-layer FVU with the SAE spliced in). Options: EvalConfig / EvalE2EConfig (evaluate/run.py); both run
`evaluate` of the Python API (api/stages.py)."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_eval(a) -> None:
    from ..api.stages import EvalConfig, evaluate

    evaluate(build_config(EvalConfig, a, a.config))


def cmd_eval_e2e(a) -> None:
    from ..api.stages import EvalE2EConfig, evaluate

    evaluate(build_config(EvalE2EConfig, a, a.config))


def register(sub) -> None:
    from ..evaluate.run import EvalConfig, EvalE2EConfig

    add_config_command(sub, "eval", EvalConfig, cmd_eval, help="evaluate SAE folders on held-out tokens")
    add_config_command(
        sub,
        "eval-e2e",
        EvalE2EConfig,
        cmd_eval_e2e,
        help="saelab eval + alive latents + FVU at every later layer (SAE spliced in)",
    )
