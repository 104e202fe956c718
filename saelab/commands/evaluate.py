"""Evaluation commands: eval (held-out reconstruction, KL / CE), eval-e2e (plus alive latents and
later-layer FVU with the SAE spliced in). Options: EvalConfig / EvalE2EConfig (evaluate/run.py)."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_eval(a) -> None:
    from ..evaluate.run import EvalConfig, evaluate

    evaluate(build_config(EvalConfig, a, a.config))


def cmd_eval_e2e(a) -> None:
    from ..evaluate.run import EvalE2EConfig, evaluate_e2e

    cfg = build_config(EvalE2EConfig, a, a.config)
    for d, r in zip(cfg.sae_dirs, evaluate_e2e(cfg)):
        later = "  ".join(f"{k.rsplit('.', 1)[-1]}:{v:.3f}" for k, v in r["later_fvu"].items())
        print(
            f"{d}\n  L0 {r['l0']:.1f}  alive {r['alive']}  FVU {r['fvu']:.4f}  KL {r['kl']:.4f}  "
            f"CE +{r['ce_increase']:.4f}\n  later-layer FVU (block:FVU) {later}"
        )


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
