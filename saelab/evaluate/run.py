"""`saelab eval`: load SAE folders, check they fit the model, evaluate, write metrics + plots."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import load_token_rows
from ..errors import UserError
from .metrics import DESCRIPTIONS, EvalBudget, density_plot, evaluate
from ..models import hookpoint_widths, load_model, resolve_hookpoints
from ..sae.folder import load_sae
from ..storage import write_json


def _common(values: list, what: str, dirs) -> str:
    if len(set(values)) > 1:
        raise UserError(f"these SAEs disagree on {what} ({sorted(set(map(str, values)))}); evaluate them separately "
                        f"or pass --{what}")
    return values[0]


def run_eval(sae_dirs: list[str], tokens: int = 100_000, ce_tokens: int = 16_384, out: str | None = None,
             corpus: str | None = None, model: str | None = None, threads: int | None = None,
             overwrite: bool = False, quiet: bool = False, device: str = "cpu") -> list[dict]:
    if tokens < 1 or ce_tokens < 0:
        raise UserError("--tokens must be positive and --ce-tokens non-negative")
    loaded = [load_sae(Path(d), device) for d in sae_dirs]  # corrupt/missing files fail here, before the model loads
    targets = [Path(out)] if out else [Path(d) / "metrics.json" for d in sae_dirs]
    if out and len(sae_dirs) > 1:
        raise UserError("--out names one metrics file; with several SAEs leave it out (each gets metrics.json)")
    for t in targets:
        if t.exists() and not overwrite:
            raise UserError(f"{t} exists; pass --overwrite to replace it")
    ours = [c["saelab"] for _, c in loaded]
    model_spec = model or _common([o.get("model_spec", "embedded") for o in ours], "model", sae_dirs)
    corpus = corpus or _common([o.get("corpus", "builtin") for o in ours], "corpus", sae_dirs)
    context = _common([c["metadata"]["context_size"] for _, c in loaded], "context", sae_dirs)
    if threads:
        torch.set_num_threads(threads)
    lm = load_model(model_spec, device=device)
    for (sae, _), d in zip(loaded, sae_dirs):
        sites = [sae.cfg.hookpoint] + ([sae.cfg.out_hookpoint] if sae.cfg.out_hookpoint else [])
        resolve_hookpoints(lm.model, sites)
        w = hookpoint_widths(lm.model, sites)
        if w[sae.cfg.hookpoint] != sae.cfg.d_in or w[sae.cfg.out_hookpoint or sae.cfg.hookpoint] != sae.cfg.d_out:
            raise UserError(f"{d}: SAE width {sae.cfg.d_in}->{sae.cfg.d_out} does not match the model's "
                            f"{sae.cfg.hookpoint} ({w[sae.cfg.hookpoint]})")
    rows = load_token_rows(corpus, lm.tokenizer, context, vocab_size=lm.model.config.vocab_size)
    t0 = time.time()
    results = evaluate(lm.model, lm.tokenizer, loaded, rows, EvalBudget(tokens=tokens, ce_tokens=ce_tokens),
                       device)
    wall = time.time() - t0
    for (sae, cfgj), d, target, r in zip(loaded, sae_dirs, targets, results):
        freq = r.pop("_freq")
        png = target.with_name(target.stem + "_density.png")
        density_plot(freq, png, f"{Path(d).name}: latent firing frequency",
                     (r["l0_histogram"], r["l0_histogram_edges"]))
        write_json(target, {"sae": str(d), "model": model_spec, "corpus": corpus, "data_fingerprint": rows.fingerprint,
                            "split": "heldout", "wall_s": wall, "metrics": r, "descriptions": DESCRIPTIONS,
                            "density_plot": png.name})
        if not quiet:
            print(format_report(Path(d).name, r, target))
    return results


def format_report(name: str, r: dict, path: Path) -> str:
    lines = [f"\n{name}",
             f"  FVU {r['fvu']:.4f}   cosine {r['cosine']:.4f}   MSE {r['mse']:.4g}   L0 {r['l0']:.1f}",
             f"  dead {100 * r['dead_fraction']:.2f}%   dense {100 * r['dense_fraction']:.2f}%   "
             f"sink/outlier positions {100 * r['excluded_fraction']:.2f}%  ({r['eval_tokens']:,} tokens)"]
    if "kl" in r:
        lines += [f"  sinks kept clean: KL {r['kl']:.4f}   CE +{r['ce_increase']:.4f} nats/token "
                  f"(clean {r['ce_clean']:.3f})   CE recovered {100 * r['ce_recovered_zero']:.1f}% vs zero, "
                  f"{100 * r['ce_recovered_mean']:.1f}% vs mean",
                  f"  every position spliced: KL {r['kl_all_positions']:.4f}   CE +{r['ce_increase_all_positions']:.4f}"
                  f"  ({r['ce_eval_tokens']:,} tokens)"]
    lines.append(f"  metrics: {path}")
    return "\n".join(lines)
