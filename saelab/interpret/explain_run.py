"""The explain stage (pipeline.py has the overview): pick the dictionary and latents of a latent cache,
open the run folder (out_folder.py: refuse / replace / resume), make the explainer, explain batch by
batch into explanations.jsonl (with each latent's examples in examples.jsonl), summarise.

    explain(ExplainConfig(cache=..., out=..., explainer="stats", latents=[1, 2]))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..features.latent_cache import LatentCache
from ..out_folder import INTERPRETATION_RUN, OutFolder, open_out
from ..storage import read_json, write_json
from .config import ExplainConfig
from .examples import ExampleConfig, ExampleSampler
from .pipeline import SubjectModels, refuse_all_failed, stop_if_down
from .records import EXAMPLES, EXPLANATIONS, ExplanationRecord, append_jsonl, by_latent, read_jsonl, repair_truncated


def _versions() -> dict:
    import transformers

    from .. import __version__

    return {"saelab": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _pick_dictionary(cache: LatentCache, dictionary: str | None) -> str:
    if dictionary:
        if dictionary not in cache.sae_names:
            raise UserError(f"dictionary {dictionary!r} is not in {cache.path}; choose from {cache.sae_names}")
        return dictionary
    if len(cache.sae_names) > 1:
        raise UserError(f"{cache.path} holds several dictionaries; pass --dictionary, one of {cache.sae_names}")
    return cache.sae_names[0]


def _pick_latents(d_sae: int, latents: list[int] | None, n_latents: int, seed: int) -> list[int]:
    if latents:
        bad = [j for j in latents if not 0 <= j < d_sae]
        if bad:
            raise UserError(f"latent {bad[0]} is outside 0..{d_sae - 1}")
        return list(dict.fromkeys(int(j) for j in latents))
    if n_latents < 1:
        raise UserError("--n-latents must be positive")
    # a prefix of one fixed permutation: asking for more latents later extends the same sample
    perm = np.random.default_rng(seed).permutation(d_sae)
    return sorted(int(j) for j in perm[:n_latents])


@dataclass
class _ExplainRun:
    """An explain run after its checks: the cache, the dictionary and latents, the run folder's manifest."""

    cfg: ExplainConfig
    examples: ExampleConfig
    cache: LatentCache
    name: str
    chosen: list[int]
    out: Path
    manifest: dict
    folder: OutFolder | None = None  # done() once every latent asked was tried: the lock goes

    def save(self) -> None:
        write_json(self.out / "manifest.json", self.manifest)


def _check_explain(cfg: ExplainConfig, examples: ExampleConfig) -> tuple[LatentCache, str, list[int], dict]:
    """The cache, the dictionary, the latents to explain and the run's identity (what a resume must match)."""
    cfg.validate()
    cache = LatentCache.open(cfg.cache)
    name = _pick_dictionary(cache, cfg.dictionary)
    chosen = _pick_latents(cache.d_sae(name), cfg.latents, cfg.n_latents, cfg.seed)
    llm = cfg.explainer == "llm"
    identity = {
        "cache": str(Path(cfg.cache).resolve()),
        "dictionary": name,
        "examples": examples.to_dict(),
        "explainer": cfg.explainer,
        "client": cfg.client if llm else None,
        "model": cfg.llm if llm else None,
        "show_activations": cfg.show_activations,
    }
    return cache, name, chosen, identity


def _open_explain_run(cfg: ExplainConfig, examples: ExampleConfig) -> _ExplainRun:
    """Check the inputs, then open the run folder: a new run, the same run resumed (its latents grow by
    the ones asked now), or with --overwrite a run made with other settings replaced."""
    cache, name, chosen, identity = _check_explain(cfg, examples)
    folder = open_out(cfg.out, INTERPRETATION_RUN, cfg.overwrite, identity, inputs=(cfg.cache,))
    out = folder.prepare()  # the folder's lock: a second explain into it is refused
    mpath = out / "manifest.json"
    manifest = read_json(mpath) if mpath.exists() else {"identity": identity, "latents": [], "wall_s": 0.0}
    manifest["latents"] = sorted(set(manifest["latents"]) | set(chosen))
    manifest.update(
        {
            "kind": "saelab-interpretation-run",
            "label": cfg.label or manifest.get("label") or out.name,
            "cache": identity["cache"],
            "dictionary": name,
            "dictionary_info": cache.info(name),
            "model_spec": cache.manifest["model_spec"],
            "examples": examples.to_dict(),
            "versions": _versions(),
        }
    )
    run = _ExplainRun(cfg, examples, cache, name, chosen, out, manifest, folder)
    run.save()
    return run


def _make_explainer(run: _ExplainRun, models: SubjectModels):
    """-> (client or None, explainer): an LLM behind the chosen client, or the statistical baseline."""
    cfg, tok = run.cfg, models.lm.tokenizer
    if cfg.explainer == "llm":
        from .explainer import LLMExplainer

        cl = models.client(cfg.client, cfg.llm, base_url=cfg.base_url, **cfg.client_options())
        return cl, LLMExplainer(cl, tok, show_activations=cfg.show_activations)
    from .explainer import StatisticalExplainer

    return None, StatisticalExplainer(tok)


def _explain_batch(run: _ExplainRun, expl, sampler: ExampleSampler, latents: list[int], fires, vmax) -> None:
    """Draw examples for `latents`, explain those with enough, and append one record per latent."""
    path, ex_path = run.out / EXPLANATIONS, run.out / EXAMPLES
    batch = [sampler.sample(j) for j in latents]
    ready = [ex for ex in batch if ex.skip_reason is None]
    results = expl.explain_many(ready) if ready else []
    res = {ex.latent: r for ex, r in zip(ready, results)}
    for ex in batch:
        base = dict(
            latent=ex.latent,
            explainer=expl.name,
            example_ids=ex.ids(),
            n_windows=ex.n_windows,
            fire_count=int(fires[ex.latent]),
            max_activation=float(vmax[ex.latent]),
        )
        if ex.skip_reason:
            rec = ExplanationRecord(status="skipped", error=ex.skip_reason, **base)
        else:
            append_jsonl(ex_path, ex.to_dict())  # before the explanation: an explained latent has its examples
            r = res[ex.latent]
            rec = ExplanationRecord(
                status="ok" if r.explanation else "failed",
                explanation=r.explanation,
                error=r.error,
                raw=r.raw,
                seconds=r.seconds,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                **base,
            )
        append_jsonl(path, rec.to_dict())


def _explain_all(run: _ExplainRun, client, expl, progress: bool) -> None:
    """Every chosen latent without a good record, `batch_latents` at a time (failed ones are tried again)."""
    path = run.out / EXPLANATIONS
    repair_truncated(path)
    repair_truncated(run.out / EXAMPLES)
    done = {j: r for j, r in by_latent(read_jsonl(path)).items() if r.get("status") != "failed"}
    todo = [j for j in run.chosen if j not in done]  # failed latents (an LLM outage, a bad reply) are tried again
    sampler = ExampleSampler(run.cache, run.name, run.examples)
    fires, vmax = run.cache.fire_counts(run.name), run.cache.max_activation(run.name)
    t0, step = time.time(), run.cfg.batch_latents
    bar = tqdm(
        total=len(run.chosen),
        initial=len(run.chosen) - len(todo),
        desc=f"explain {run.name}",
        unit="latent",
        disable=not progress,
    )
    for b in range(0, len(todo), step):
        _explain_batch(run, expl, sampler, todo[b : b + step], fires, vmax)
        bar.update(len(todo[b : b + step]))
        stop_if_down(client, "explain", bar)
    bar.close()
    run.manifest["wall_s"] = run.manifest.get("wall_s", 0.0) + time.time() - t0
    if client is not None:
        run.manifest["explain_usage"] = client.usage.to_dict()
    run.save()


def explain(cfg: ExplainConfig, example_cfg: ExampleConfig | None = None, progress: bool = True) -> Path:
    """Explain latents of a cached dictionary into `cfg.out` (resumable); returns the run folder.
    `example_cfg`: how examples are drawn, when more than the options say (default: `cfg.examples()`)."""
    examples = example_cfg or cfg.examples()
    run = _open_explain_run(cfg, examples)
    models = SubjectModels(run.cache.manifest["model_spec"], cfg.device)
    client, expl = _make_explainer(run, models)
    run.manifest["explainer"] = expl.describe()
    run.save()
    _explain_all(run, client, expl, progress)
    run.folder.done()
    recs = by_latent(read_jsonl(run.out / EXPLANATIONS))
    counts = {s: sum(1 for j in run.chosen if recs.get(j, {}).get("status") == s) for s in ("ok", "failed", "skipped")}
    chosen = [recs[j] for j in run.chosen if j in recs]
    refuse_all_failed("explain", chosen, lambda r: r.get("status") == "ok", run.out / EXPLANATIONS)
    if progress:
        print(
            f"saelab: {counts['ok']} explained, {counts['failed']} failed, {counts['skipped']} skipped (too few "
            f"examples) -> {run.out / EXPLANATIONS}"
        )
    return run.out
