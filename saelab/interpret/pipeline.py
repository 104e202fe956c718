"""explain and score: one latent at a time from the cache to a record on disk (the Python API
behind `saelab explain` and `saelab score`).

    run_explain(cache, out, dictionary=None, latents=None, n_latents=200, explainer="llm", client="local", ...)
    run_score(run, scorers=["embedding", "surprisal", ...], client="local", ...)

Both are resumable: a rerun with the same arguments skips latents that already have a good record
and tries failed ones again; a server that is down stops the run early (`stop_if_down`).
The examples are re-drawn deterministically for scoring (same seed, same cache) and checked
against the ids recorded at explanation time, so explanation and scoring examples stay disjoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..features.latent_cache import LatentCache
from ..errors import UserError
from ..storage import read_json, write_json
from .examples import ExampleConfig, ExampleSampler, LatentExamples
from .records import (EXAMPLES, EXPLANATIONS, ExplanationRecord, append_jsonl, by_latent, read_jsonl, repair_truncated,
                      scores_path)
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


def run_explain(cache_path, out, dictionary: str | None = None, latents: list[int] | None = None,
                n_latents: int = 200, explainer: str = "llm", client: str = "local", model: str | None = None,
                base_url: str | None = None, example_cfg: ExampleConfig | None = None, show_activations: bool = False,
                batch_latents: int = 4, seed: int = 0, overwrite: bool = False, label: str | None = None,
                client_opts: dict | None = None, progress: bool = True,
                device: str = "cpu") -> Path:
    if explainer not in ("llm", "stats"):
        raise UserError(f"--explainer must be llm or stats, not {explainer!r}")
    if batch_latents < 1:
        raise UserError("--batch-latents must be positive")
    cache = LatentCache.open(cache_path)
    name = _pick_dictionary(cache, dictionary)
    cfg = example_cfg or ExampleConfig(seed=seed)
    chosen = _pick_latents(cache.d_sae(name), latents, n_latents, seed)
    out = Path(out)
    identity = {"cache": str(Path(cache_path).resolve()), "dictionary": name, "examples": cfg.to_dict(),
                "explainer": explainer, "client": client if explainer == "llm" else None,
                "model": model if explainer == "llm" else None, "show_activations": show_activations}
    mpath = out / "manifest.json"
    if mpath.exists():
        old = read_json(mpath)
        if old.get("identity") != identity:
            if not overwrite:
                raise UserError(f"{out} holds a run made with other settings; pass --overwrite to replace it or "
                                f"choose another --out")
            import shutil

            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not an interpretation run; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_json(mpath) if mpath.exists() else {"identity": identity, "latents": [], "wall_s": 0.0}
    manifest["latents"] = sorted(set(manifest["latents"]) | set(chosen))
    manifest.update({"kind": "saelab-interpretation-run", "label": label or manifest.get("label") or out.name,
                     "cache": identity["cache"], "dictionary": name, "dictionary_info": cache.info(name),
                     "model_spec": cache.manifest["model_spec"], "examples": cfg.to_dict(), "versions": _versions()})
    write_json(mpath, manifest)

    models = _Models(cache.manifest["model_spec"], device)
    tok = models.lm.tokenizer
    if explainer == "llm":
        from .explainer import LLMExplainer

        cl = models.client(client, model, base_url=base_url, **(client_opts or {}))
        expl = LLMExplainer(cl, tok, show_activations=show_activations)
    else:
        from .explainer import StatisticalExplainer

        cl, expl = None, StatisticalExplainer(tok)
    manifest["explainer"] = expl.describe()
    write_json(mpath, manifest)

    sampler = ExampleSampler(cache, name, cfg)
    path, ex_path = out / EXPLANATIONS, out / EXAMPLES
    repair_truncated(path)
    repair_truncated(ex_path)
    done = {j: r for j, r in by_latent(read_jsonl(path)).items() if r.get("status") != "failed"}
    todo = [j for j in chosen if j not in done]  # failed latents (an LLM outage, a bad reply) are tried again
    fires, vmax = cache.fire_counts(name), cache.max_activation(name)
    t0 = time.time()
    bar = tqdm(total=len(chosen), initial=len(chosen) - len(todo), desc=f"explain {name}", unit="latent",
               disable=not progress)
    for b in range(0, len(todo), batch_latents):
        batch = [sampler.sample(j) for j in todo[b:b + batch_latents]]
        ready = [ex for ex in batch if ex.skip_reason is None]
        results = expl.explain_many(ready) if ready else []
        res = {ex.latent: r for ex, r in zip(ready, results)}
        for ex in batch:
            base = dict(latent=ex.latent, explainer=expl.name, example_ids=ex.ids(), n_windows=ex.n_windows,
                        fire_count=int(fires[ex.latent]), max_activation=float(vmax[ex.latent]))
            if ex.skip_reason:
                rec = ExplanationRecord(status="skipped", error=ex.skip_reason, **base)
            else:
                append_jsonl(ex_path, ex.to_dict())  # before the explanation: an explained latent has its examples
                r = res[ex.latent]
                rec = ExplanationRecord(status="ok" if r.explanation else "failed", explanation=r.explanation,
                                        error=r.error, raw=r.raw, seconds=r.seconds, prompt_tokens=r.prompt_tokens,
                                        completion_tokens=r.completion_tokens, **base)
            append_jsonl(path, rec.to_dict())
            bar.update(1)
        stop_if_down(cl, "explain", bar)
    bar.close()
    manifest["wall_s"] = manifest.get("wall_s", 0.0) + time.time() - t0
    if cl is not None:
        manifest["explain_usage"] = cl.usage.to_dict()
    write_json(mpath, manifest)
    recs = by_latent(read_jsonl(path))
    counts = {s: sum(1 for j in chosen if recs.get(j, {}).get("status") == s) for s in ("ok", "failed", "skipped")}
    if progress:
        print(f"saelab: {counts['ok']} explained, {counts['failed']} failed, {counts['skipped']} skipped (too few "
              f"examples) -> {path}")
    return out


def stop_if_down(client, what: str, bar) -> None:
    """A server that is down (the HTTP clients' `down`) ends the run with a clear message; what was
    recorded stays, and a rerun tries the failed latents again."""
    down = getattr(client, "down", None)
    if down:
        bar.close()
        raise UserError(f"{what} stopped early: {down}. Records so far are kept; start the server (or fix "
                        f"--base-url) and rerun the same command: failed latents are tried again")


def build_scorer(kind: str, models: _Models, cache: LatentCache, dictionary: str, judge=None, judge_mode="auto",
                 batch_examples: int = 10, steer_scale: float = 2.0, embedder=None):
    tok = models.lm.tokenizer
    if kind in JUDGED:
        from .scorers.judged import JudgeScorer

        return JudgeScorer(kind, judge, tok, judge_mode, batch_examples)
    if kind == "embedding":
        from .scorers.embedding import EmbeddingScorer

        return EmbeddingScorer(tok, embedder)
    if kind == "surprisal":
        from .scorers.surprisal import SurprisalScorer

        return SurprisalScorer(models.lm)
    if kind == "intervention":
        from .scorers.intervention import InterventionScorer

        return InterventionScorer(models.lm, cache, dictionary, scale=steer_scale)
    raise UserError(f"unknown scorer {kind!r}; choose from {', '.join(SCORERS)}")


def run_score(run, scorers: list[str], client: str = "local", model: str | None = None, base_url: str | None = None,
              judge_mode: str = "auto", batch_examples: int = 10, steer_scale: float = 2.0,
              latents: list[int] | None = None, client_opts: dict | None = None,
              progress: bool = True, device: str = "cpu") -> dict[str, int]:
    """Score every explained latent of a run with each scorer; returns {scorer: latents scored now}."""
    run = Path(run)
    bad = [s for s in scorers if s not in SCORERS]
    if bad or not scorers:
        raise UserError(f"unknown scorer {bad[0] if bad else '(none)'}; choose from {', '.join(SCORERS)}")
    if judge_mode not in ("auto", "logprob", "generate"):
        raise UserError("--judge-mode must be auto, logprob or generate")
    mpath = run / "manifest.json"
    if not mpath.exists():
        raise UserError(f"{run} is not an interpretation run (no manifest.json); make one with `saelab explain`")
    manifest = read_json(mpath)
    name = manifest["dictionary"]
    cfg = ExampleConfig(**manifest["examples"])
    expl = by_latent(read_jsonl(run / EXPLANATIONS))
    todo_latents = [j for j in sorted(expl) if expl[j]["status"] == "ok" and (not latents or j in latents)]
    stored = by_latent(read_jsonl(run / EXAMPLES))
    # the latent cache is needed only for runs made before examples were stored, and for intervention
    # (the decoder); a run moved to another machine is scored from its own examples.jsonl
    need_cache = "intervention" in scorers or any(j not in stored for j in todo_latents)
    if need_cache and not Path(manifest["cache"]).exists():
        raise UserError(f"the latent cache {manifest['cache']} of this run is missing; it is needed for "
                        + ("the intervention scorer" if "intervention" in scorers else "latents without stored "
                           "examples") + "; score the others with --scorers detection fuzzing embedding surprisal")
    cache = LatentCache.open(manifest["cache"]) if need_cache else None
    models = _Models(manifest["model_spec"], device)
    judge = None
    if JUDGED & set(scorers):
        judge = models.client(client, model, base_url=base_url, **(client_opts or {}))
    objs = {s: build_scorer(s, models, cache, name, judge, judge_mode, batch_examples, steer_scale) for s in scorers}
    manifest.setdefault("scoring", {})
    for s in scorers:
        manifest["scoring"][s] = {"mode": getattr(objs[s], "mode", None), "batch_examples": batch_examples,
                                  "steer_scale": steer_scale if s == "intervention" else None,
                                  "judge": judge.describe() if (judge is not None and s in JUDGED) else None}
    write_json(mpath, manifest)
    done = {}
    for s in scorers:  # a failed result (an LLM outage, unusable replies) is scored again
        repair_truncated(scores_path(run, s))
        done[s] = {j for j, r in by_latent(read_jsonl(scores_path(run, s))).items() if r.get("ok")}
    sampler = ExampleSampler(cache, name, cfg) if cache is not None else None
    scored = {s: 0 for s in scorers}
    work = [j for j in todo_latents if any(j not in done[s] for s in scorers)]
    bar = tqdm(work, desc=f"score {run.name}", unit="latent", disable=not progress)
    for j in bar:
        ex = LatentExamples.from_dict(stored[j]) if j in stored else sampler.sample(j)
        if ex.ids() != expl[j]["example_ids"]:
            raise UserError(f"latent {j}: the examples drawn now differ from those recorded at explanation time; "
                            f"the cache {manifest['cache']} changed since `saelab explain` ran")
        for s in scorers:
            if j in done[s]:
                continue
            try:
                r = objs[s].score(ex, expl[j]["explanation"])
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as e:  # one latent's failure is recorded; the run goes on
                from .scorers.base import ScoreResult

                r = ScoreResult.failure(s, j, f"{type(e).__name__}: {e}")
            append_jsonl(scores_path(run, s), r.to_dict())
            scored[s] += 1
        stop_if_down(judge, "score", bar)
    if judge is not None:
        manifest = read_json(mpath)
        manifest["judge_usage"] = judge.usage.to_dict()
        write_json(mpath, manifest)
    return scored
