"""Synthetic ground truth: `saelab synthetic` writes activations made from a known dictionary as an
activation cache (train on it with `saelab train --from-activations`), `saelab synthetic-recovery`
says how well trained dictionaries recover that truth (docs/EVAL.md, "Synthetic ground truth")."""

from __future__ import annotations

import json

from ..options import add_config_command, build_config


def cmd_synthetic(a) -> None:
    from ..evaluate.synthetic_data import SyntheticConfig, synthetic_summary, write_synthetic

    cfg = build_config(SyntheticConfig, a, a.config)
    print(synthetic_summary(write_synthetic(cfg)))


def cmd_recovery(a) -> None:
    from ..evaluate.synthetic_recovery import RecoveryConfig, recovery_reports

    cfg = build_config(RecoveryConfig, a, a.config)
    for d, r in zip(cfg.sae_dirs, recovery_reports(cfg)):
        if a.json:
            print(json.dumps({"sae": d} | r))
            continue
        ab = r["absorption"]
        print(
            f"{d}\n  recovered {100 * r['recovered']:.1f}% at cos >= {r['threshold']}  MMCS truth {r['mmcs_truth']:.3f} "
            f"decoder {r['mmcs_decoder']:.3f}  precision {r['latent_precision']:.3f}  recall {r['latent_recall']:.3f}  "
            f"dead {100 * r['dead']:.1f}%  L0 {r['l0']:.1f} (true {r['true_l0']:.1f})  FVU {r['fvu']:.3f}"
            + "\n  recovered by firing probability (quarters, most frequent first): "
            + "  ".join(f"p {q['p_max']:.3g}..{q['p_min']:.3g}: {100 * q['recovered']:.0f}%" for q in r["by_frequency"])
            + (f"\n  absorption {ab['rate']:.3f} ({ab['pairs_absorbed']}/{ab['pairs']} pairs absorbed)" if ab else "")
        )


def register(sub) -> None:
    from ..evaluate.synthetic_data import SyntheticConfig
    from ..evaluate.synthetic_recovery import RecoveryConfig

    add_config_command(
        sub,
        "synthetic",
        SyntheticConfig,
        cmd_synthetic,
        help="write synthetic activations from a known dictionary (an activation cache)",
        description="N unit-norm true features in d dims, Zipf-like firing, optional correlations and "
        "a parent/child hierarchy; writes shards + manifest.json + truth.safetensors. "
        "Train on it with `saelab train --from-activations DIR --model synthetic "
        "--hookpoints synthetic --context C`.",
    )
    r = add_config_command(
        sub,
        "synthetic-recovery",
        RecoveryConfig,
        cmd_recovery,
        help="how well SAEs trained on a synthetic cache recover its true features",
    )
    # how to print, not what to compute: the one option of this command outside its config
    r.add_argument("--json", action="store_true", help="print one JSON object per folder")
