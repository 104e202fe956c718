"""The score stage (pipeline.py has the overview): open an explained run, build the scorers, score
latent by latent (each scorer appends to its own scores file; a failure is recorded and the run goes on),
record the judge's usage. The examples are re-drawn deterministically (same seed, same cache) or read
from the run's examples.jsonl, and checked against the ids recorded at explanation time.

    score(ScoreConfig(run=..., scorers=["embedding", "surprisal"]))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..features.latent_cache import LatentCache
from ..input_kind import require_kind
from ..out_folder import INTERPRETATION_RUN, finish, hold
from ..storage import read_json, write_json
from .config import ScoreConfig
from .examples import ExampleConfig, ExampleSampler, LatentExamples
from .pipeline import SubjectModels, all_failed, stop_if_down
from .records import EXAMPLES, EXPLANATIONS, append_jsonl, by_latent, read_jsonl, repair_truncated, scores_path
from .scorers import JUDGED, SCORERS
from .validity import donors, validity_path


def build_scorer(
    kind: str, cfg: ScoreConfig, models: SubjectModels, cache: LatentCache | None, dictionary: str, judge=None
):
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
    donors: dict[int, int]  # --validity: latent -> the latent whose explanation is its wrong one (else empty)

    @property
    def name(self) -> str:
        return self.manifest["dictionary"]


def _open_score_run(cfg: ScoreConfig) -> _ScoreRun:
    """Check the inputs: the run folder, its explanations and examples, and the latent cache if it is needed."""
    cfg.validate()
    run = Path(cfg.run)
    require_kind(run, INTERPRETATION_RUN, "make one with `saelab explain CACHE --out RUN`, then score RUN")
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
    # the donors are drawn over every explained latent, so a run scored in parts gets the same pairs
    give = donors([j for j in expl if expl[j]["status"] == "ok"]) if cfg.validity else {}
    return _ScoreRun(cfg, run, manifest, expl, stored, todo, cache, give)


def _make_scorers(run: _ScoreRun, models: SubjectModels):
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


def _score_one(obj, ex: LatentExamples, explanation: str) -> dict:
    """One scorer's result record; a failure is recorded, the run goes on."""
    try:
        return obj.score(ex, explanation).to_dict()
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as e:  # one latent's failure is recorded; the run goes on
        from .scorers.base import ScoreResult

        return ScoreResult.failure(obj.name, ex.latent, f"{type(e).__name__}: {e}").to_dict()


def _score_latent(
    run: _ScoreRun, j: int, ex: LatentExamples, objs: dict, done: dict[str, set], done_v: dict[str, set]
) -> dict[str, int]:
    """Each scorer that has no good record for latent j scores it (and, with --validity, scores it with its
    donor's explanation too, into validity_SCORER.jsonl)."""
    scored = {}
    for s, obj in objs.items():
        if j not in done[s]:
            append_jsonl(scores_path(run.path, s), _score_one(obj, ex, run.explanations[j]["explanation"]))
            scored[s] = 1
        if j in run.donors and j not in done_v[s]:
            d = run.donors[j]
            rec = _score_one(obj, ex, run.explanations[d]["explanation"]) | {"donor": d}
            append_jsonl(validity_path(run.path, s), rec)
            scored[s] = 1
    return scored


def _score_all(run: _ScoreRun, judge, objs: dict, progress: bool) -> dict[str, int]:
    """Every latent some scorer has not scored well yet; -> {scorer: latents scored now}."""
    done, done_v = {}, {}
    for s in objs:  # a failed result (an LLM outage, unusable replies) is scored again
        for d, path in ((done, scores_path(run.path, s)), (done_v, validity_path(run.path, s))):
            repair_truncated(path)
            d[s] = {j for j, r in by_latent(read_jsonl(path)).items() if r.get("ok")}
    sampler = ExampleSampler(run.cache, run.name, ExampleConfig(**run.manifest["examples"])) if run.cache else None
    scored = {s: 0 for s in objs}
    bar = tqdm(
        [j for j in run.todo if any(j not in done[s] or (j in run.donors and j not in done_v[s]) for s in objs)],
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
        for s in _score_latent(run, j, ex, objs, done, done_v):
            scored[s] += 1
        stop_if_down(judge, "score", bar)
    return scored


def score(cfg: ScoreConfig, progress: bool = True) -> dict[str, int]:
    """Score every explained latent of a run with each scorer; returns {scorer: latents scored now}."""
    run = _open_score_run(cfg)
    models = SubjectModels(run.manifest["model_spec"], cfg.device)
    judge, objs = _make_scorers(run, models)
    hold(run.path, "run")  # the run folder's lock: no explain or second score writes it meanwhile
    scored = _score_all(run, judge, objs, progress)
    if judge is not None:
        manifest = read_json(run.path / "manifest.json")
        manifest["judge_usage"] = judge.usage.to_dict()
        write_json(run.path / "manifest.json", manifest)
    finish(run.path)
    failed = []  # every scorer that failed every latent (a judge down, a NaN steering): an error, not a score
    for s in objs:
        recs = by_latent(read_jsonl(scores_path(run.path, s)))
        latest = [recs[j] for j in run.todo if j in recs]
        failed.append(all_failed(f"score {s}", latest, lambda r: r.get("ok"), scores_path(run.path, s)))
    if any(failed):
        raise UserError("; ".join(m for m in failed if m))
    return scored
