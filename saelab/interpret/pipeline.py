"""explain and score: one latent at a time from the cache to a record on disk (the Python API
behind `saelab explain` and `saelab score`, which take the same config dataclasses, config.py).

    explain(ExplainConfig(cache=..., out=..., explainer="stats", latents=[1, 2]))
    score(ScoreConfig(run=..., scorers=["embedding", "surprisal"]))
    run_explain(cache, out, **fields) / run_score(run, scorers, **fields): the same, fields as keywords

Each reads as its steps: explain = check inputs -> open the run folder (out_folder.py: refuse /
replace / resume) -> make the explainer -> explain batch by batch -> summarise; score = open the run
-> build the scorers -> score latent by latent -> record the judge's usage.

Both are resumable: a rerun with the same arguments skips latents that already have a good record
and tries failed ones again; a server that is down stops the run early (`stop_if_down`).
The examples are re-drawn deterministically for scoring (same seed, same cache) and checked
against the ids recorded at explanation time, so explanation and scoring examples stay disjoint.
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
from ..out_folder import INTERPRETATION_RUN, open_out
from ..storage import read_json, write_json
from .config import ExplainConfig, ScoreConfig
from .examples import ExampleConfig, ExampleSampler, LatentExamples
from .records import (
    EXAMPLES,
    EXPLANATIONS,
    ExplanationRecord,
    append_jsonl,
    by_latent,
    read_jsonl,
    repair_truncated,
    scores_path,
)
from .scorers import JUDGED, SCORERS


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


class _Models:
    """Loads the subject model once and shares it with a local client on the same model."""

    def __init__(self, spec: str, device: str = "cpu"):
        self.spec, self.device, self._lm = spec, device, None

    @property
    def lm(self):
        if self._lm is None:
            from ..models import load_model

            self._lm = load_model(self.spec, device=self.device)
        return self._lm

    def client(self, kind: str, model: str | None, **kw):
        from .clients import make_client

        if kind == "local" and (model or "embedded") == self.spec:
            return make_client("local", model, lm=self.lm, **kw)
        return make_client(kind, model, device=self.device, **kw)


# ====================================================================== explain


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
    out = open_out(cfg.out, INTERPRETATION_RUN, cfg.overwrite, identity).prepare()
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
    run = _ExplainRun(cfg, examples, cache, name, chosen, out, manifest)
    run.save()
    return run


def _make_explainer(run: _ExplainRun, models: _Models):
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
    models = _Models(run.cache.manifest["model_spec"], cfg.device)
    client, expl = _make_explainer(run, models)
    run.manifest["explainer"] = expl.describe()
    run.save()
    _explain_all(run, client, expl, progress)
    recs = by_latent(read_jsonl(run.out / EXPLANATIONS))
    counts = {s: sum(1 for j in run.chosen if recs.get(j, {}).get("status") == s) for s in ("ok", "failed", "skipped")}
    if progress:
        print(
            f"saelab: {counts['ok']} explained, {counts['failed']} failed, {counts['skipped']} skipped (too few "
            f"examples) -> {run.out / EXPLANATIONS}"
        )
    return run.out


def run_explain(cache_path, out, *, example_cfg: ExampleConfig | None = None, progress: bool = True, **options) -> Path:
    """`explain` with the config's fields as keywords (`model=` names the LLM, as `llm=` does)."""
    _keyword_spellings(options)
    return explain(ExplainConfig(cache=str(cache_path), out=str(out), **options), example_cfg, progress)


def stop_if_down(client, what: str, bar) -> None:
    """A server that is down (the HTTP clients' `down`) ends the run with a clear message; what was
    recorded stays, and a rerun tries the failed latents again."""
    down = getattr(client, "down", None)
    if down:
        bar.close()
        raise UserError(
            f"{what} stopped early: {down}. Records so far are kept; start the server (or fix "
            f"--base-url) and rerun the same command: failed latents are tried again"
        )


def _keyword_spellings(options: dict) -> None:
    """The shorthands' older keywords: `model=` (the LLM; the config calls it `llm`), `client_opts={...}`."""
    if "model" in options:
        options["llm"] = options.pop("model")
    options.update(options.pop("client_opts", None) or {})


# ====================================================================== score


def build_scorer(kind: str, cfg: ScoreConfig, models: _Models, cache: LatentCache | None, dictionary: str, judge=None):
    tok = models.lm.tokenizer
    if kind in JUDGED:
        from .scorers.judged import JudgeScorer

        return JudgeScorer(kind, judge, tok, cfg.judge_mode, cfg.batch_examples)
    if kind == "embedding":
        from .scorers.embedding import EmbeddingScorer

        return EmbeddingScorer(tok, None)
    if kind == "surprisal":
        from .scorers.surprisal import SurprisalScorer

        return SurprisalScorer(models.lm)
    if kind == "intervention":
        from .scorers.intervention import InterventionScorer

        return InterventionScorer(models.lm, cache, dictionary, scale=cfg.steer_scale)
    raise UserError(f"unknown scorer {kind!r}; choose from {', '.join(SCORERS)}")


@dataclass
class _ScoreRun:
    """A run opened for scoring: its manifest, explanations, stored examples, and the cache when needed."""

    cfg: ScoreConfig
    path: Path
    manifest: dict
    explanations: dict[int, dict]
    stored: dict[int, dict]
    todo: list[int]  # explained latents to score
    cache: LatentCache | None

    @property
    def name(self) -> str:
        return self.manifest["dictionary"]


def _open_score_run(cfg: ScoreConfig) -> _ScoreRun:
    """Check the inputs: the run folder, its explanations and examples, and the latent cache if it is needed."""
    cfg.validate()
    run = Path(cfg.run)
    if not INTERPRETATION_RUN.holds(run):
        raise UserError(f"{run} is not an interpretation run (no manifest.json); make one with `saelab explain`")
    manifest = read_json(run / "manifest.json")
    expl = by_latent(read_jsonl(run / EXPLANATIONS))
    todo = [j for j in sorted(expl) if expl[j]["status"] == "ok" and (not cfg.latents or j in cfg.latents)]
    stored = by_latent(read_jsonl(run / EXAMPLES))
    # the latent cache is needed only for runs made before examples were stored, and for intervention
    # (the decoder); a run moved to another machine is scored from its own examples.jsonl
    need_cache = "intervention" in cfg.scorers or any(j not in stored for j in todo)
    if need_cache and not Path(manifest["cache"]).exists():
        raise UserError(
            f"the latent cache {manifest['cache']} of this run is missing; it is needed for "
            + ("the intervention scorer" if "intervention" in cfg.scorers else "latents without stored examples")
            + "; score the others with --scorers detection fuzzing embedding surprisal"
        )
    cache = LatentCache.open(manifest["cache"]) if need_cache else None
    return _ScoreRun(cfg, run, manifest, expl, stored, todo, cache)


def _make_scorers(run: _ScoreRun, models: _Models):
    """-> (judge client or None, {scorer: object}); the scoring settings are recorded in the manifest."""
    cfg = run.cfg
    judge = None
    if JUDGED & set(cfg.scorers):
        judge = models.client(cfg.client, cfg.llm, base_url=cfg.base_url, **cfg.client_options())
    objs = {s: build_scorer(s, cfg, models, run.cache, run.name, judge) for s in cfg.scorers}
    run.manifest.setdefault("scoring", {})
    for s in cfg.scorers:
        run.manifest["scoring"][s] = {
            "mode": getattr(objs[s], "mode", None),
            "batch_examples": cfg.batch_examples,
            "steer_scale": cfg.steer_scale if s == "intervention" else None,
            "judge": judge.describe() if (judge is not None and s in JUDGED) else None,
        }
    write_json(run.path / "manifest.json", run.manifest)
    return judge, objs


def _score_latent(run: _ScoreRun, j: int, ex: LatentExamples, objs: dict, done: dict[str, set]) -> dict[str, int]:
    """Each scorer that has no good record for latent j scores it; a failure is recorded, the run goes on."""
    scored = {}
    for s, obj in objs.items():
        if j in done[s]:
            continue
        try:
            r = obj.score(ex, run.explanations[j]["explanation"])
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as e:  # one latent's failure is recorded; the run goes on
            from .scorers.base import ScoreResult

            r = ScoreResult.failure(s, j, f"{type(e).__name__}: {e}")
        append_jsonl(scores_path(run.path, s), r.to_dict())
        scored[s] = 1
    return scored


def _score_all(run: _ScoreRun, judge, objs: dict, progress: bool) -> dict[str, int]:
    """Every latent some scorer has not scored well yet; -> {scorer: latents scored now}."""
    done = {}
    for s in objs:  # a failed result (an LLM outage, unusable replies) is scored again
        repair_truncated(scores_path(run.path, s))
        done[s] = {j for j, r in by_latent(read_jsonl(scores_path(run.path, s))).items() if r.get("ok")}
    sampler = ExampleSampler(run.cache, run.name, ExampleConfig(**run.manifest["examples"])) if run.cache else None
    scored = {s: 0 for s in objs}
    bar = tqdm(
        [j for j in run.todo if any(j not in done[s] for s in objs)],
        desc=f"score {run.path.name}",
        unit="latent",
        disable=not progress,
    )
    for j in bar:
        ex = LatentExamples.from_dict(run.stored[j]) if j in run.stored else sampler.sample(j)
        if ex.ids() != run.explanations[j]["example_ids"]:
            raise UserError(
                f"latent {j}: the examples drawn now differ from those recorded at explanation time; "
                f"the cache {run.manifest['cache']} changed since `saelab explain` ran"
            )
        for s in _score_latent(run, j, ex, objs, done):
            scored[s] += 1
        stop_if_down(judge, "score", bar)
    return scored


def score(cfg: ScoreConfig, progress: bool = True) -> dict[str, int]:
    """Score every explained latent of a run with each scorer; returns {scorer: latents scored now}."""
    run = _open_score_run(cfg)
    models = _Models(run.manifest["model_spec"], cfg.device)
    judge, objs = _make_scorers(run, models)
    scored = _score_all(run, judge, objs, progress)
    if judge is not None:
        manifest = read_json(run.path / "manifest.json")
        manifest["judge_usage"] = judge.usage.to_dict()
        write_json(run.path / "manifest.json", manifest)
    return scored


def run_score(run, scorers: list[str], *, progress: bool = True, **options) -> dict[str, int]:
    """`score` with the config's fields as keywords (`model=` names the judge LLM, as `llm=` does)."""
    _keyword_spellings(options)
    return score(ScoreConfig(run=str(run), scorers=list(scorers), **options), progress)
