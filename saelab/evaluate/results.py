"""What evaluating a dictionary gives: typed results (`SaeMetrics`), their descriptions, the report.

`SaeMetrics.to_dict()` is the `metrics` block of metrics.json: reconstruction keys first, then the
downstream ones (when CE tokens were spent), then the later-layer ones (eval-e2e, sweep).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

DESCRIPTIONS = {
    "fvu": "fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (lower is better)",
    "mse": "mean squared error per element",
    "cosine": "mean cosine similarity between x and x_hat",
    "relative_reconstruction_bias": "gamma = sum ||x_hat - mean||^2 / sum <x_hat - mean, x - mean> (Rajamanoharan et "
    "al. 2024, each side centred by its mean): 1 = unbiased, < 1 = reconstructions "
    "shrunk (an L1 penalty's signature)",
    "l0": "mean number of active latents per token",
    "dead_fraction": "fraction of latents that never fired on the evaluation tokens",
    "dense_fraction": "fraction of latents firing on more than 10% of tokens",
    "kl": "KL(clean || spliced) of next-token distributions, nats/token, sinks kept clean",
    "ce_clean": "cross-entropy of the clean model, nats/token",
    "ce_spliced": "cross-entropy with the reconstruction spliced in, sinks kept clean",
    "ce_increase": "ce_spliced - ce_clean, nats/token (lower is better)",
    "ce_zero_ablation": "cross-entropy with the site set to zero (sinks kept clean)",
    "ce_mean_ablation": "cross-entropy with the site set to its mean (sinks kept clean)",
    "ce_recovered_zero": "(ce_zero - ce_spliced) / (ce_zero - ce_clean): 1 = perfect, 0 = as bad as zero-ablation",
    "ce_recovered_mean": "(ce_mean - ce_spliced) / (ce_mean - ce_clean)",
    "kl_all_positions": "KL with every position spliced, sinks included",
    "ce_increase_all_positions": "CE increase with every position spliced, sinks included",
    "excluded_fraction": "fraction of evaluation positions treated as sinks/outliers",
}
LATER_DESCRIPTIONS = {
    "alive": "latents that fired at least once on the held-out reconstruction tokens",
    "later_fvu": "later_fvu: FVU of each later block's output (residual stream) with the SAE spliced in, sinks kept "
    "clean; later_fvu_mean: their mean",
}


@dataclass
class Downstream:
    """Effect on the model's next-token predictions (full forwards, `ce_tokens` positions)."""

    kl: float
    ce_clean: float
    ce_spliced: float
    ce_increase: float
    ce_zero_ablation: float
    ce_mean_ablation: float
    ce_recovered_zero: float
    ce_recovered_mean: float
    kl_all_positions: float
    ce_increase_all_positions: float
    ce_eval_tokens: int


@dataclass
class LaterLayers:
    """What Braun et al. (2024) report beside CE: alive latents, and the FVU of every later block's
    output with the SAE spliced in."""

    alive: int
    later_fvu: dict[str, float]
    later_fvu_mean: float


@dataclass
class SaeMetrics:
    """Metrics of one dictionary on held-out tokens. Reads like the dict it writes (`m["fvu"]`)."""

    fvu: float
    mse: float
    cosine: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    excluded_fraction: float
    eval_tokens: int
    l0_histogram: list[int]
    l0_histogram_edges: list[float]
    relative_reconstruction_bias: float | None = None  # (None: metrics.json written before it was measured)
    downstream: Downstream | None = None
    later: LaterLayers | None = None

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("downstream", "later")}
        for part in (self.downstream, self.later):
            if part is not None:
                out.update(asdict(part))
        return out

    def descriptions(self) -> dict:
        return DESCRIPTIONS | (LATER_DESCRIPTIONS if self.later is not None else {})

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


def format_report(name: str, m: SaeMetrics | dict, path: Path) -> str:
    r = m.to_dict() if isinstance(m, SaeMetrics) else m
    lines = [
        f"\n{name}",
        f"  FVU {r['fvu']:.4f}   cosine {r['cosine']:.4f}   MSE {r['mse']:.4g}   L0 {r['l0']:.1f}"
        + (
            f"   relative reconstruction bias {r['relative_reconstruction_bias']:.3f}"
            if r.get("relative_reconstruction_bias") is not None
            else ""
        ),
        f"  dead {100 * r['dead_fraction']:.2f}%   dense {100 * r['dense_fraction']:.2f}%   "
        f"sink/outlier positions {100 * r['excluded_fraction']:.2f}%  ({r['eval_tokens']:,} tokens)",
    ]
    if "kl" in r:
        lines += [
            f"  sinks kept clean: KL {r['kl']:.4f}   CE +{r['ce_increase']:.4f} nats/token "
            f"(clean {r['ce_clean']:.3f})   CE recovered {100 * r['ce_recovered_zero']:.1f}% vs zero, "
            f"{100 * r['ce_recovered_mean']:.1f}% vs mean",
            f"  every position spliced: KL {r['kl_all_positions']:.4f}   CE +{r['ce_increase_all_positions']:.4f}"
            f"  ({r['ce_eval_tokens']:,} tokens)",
        ]
    lines.append(f"  metrics: {path}")
    return "\n".join(lines)
