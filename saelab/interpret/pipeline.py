"""The interpretation pipeline, explain then score: one latent at a time from the cache to a record on
disk (the Python API behind `saelab explain` and `saelab score`, which take the same config dataclasses,
config.py). The explain stage is explain_run.py, the score stage scoring_run.py; this module holds what
both share: the subject model (loaded once, lent to a local client) and stopping when a server is down.

    explain(ExplainConfig(cache=..., out=..., explainer="stats", latents=[1, 2]))      explain_run.py
    score(ScoreConfig(run=..., scorers=["embedding", "surprisal"]))                     scoring_run.py

Each reads as its steps: explain = check inputs -> open the run folder (out_folder.py: refuse /
replace / resume) -> make the explainer -> explain batch by batch -> summarise; score = open the run
-> build the scorers -> score latent by latent -> record the judge's usage.

Both are resumable: a rerun with the same arguments skips latents that already have a good record
and tries failed ones again; a server that is down stops the run early (`stop_if_down`).
The examples are re-drawn deterministically for scoring (same seed, same cache) and checked
against the ids recorded at explanation time, so explanation and scoring examples stay disjoint.
"""

from __future__ import annotations

from ..errors import UserError


class SubjectModels:
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


def all_failed(what: str, records: list[dict], good, path) -> str | None:
    """The one line saying that no latent succeeded and some failed (None when any succeeded):
    `explain --timeout 0.001` failed every latent and exited 0. `records`: this run's latest record per latent;
    `good(record)`: it succeeded. Latents skipped for too few examples are not failures. The records stay:
    a rerun tries the failed latents again."""
    failed = [r for r in records if not good(r) and r.get("status") != "skipped"]
    if not failed or any(good(r) for r in records):
        return None
    errors = sorted({str(r.get("error") or "no answer") for r in failed})
    return (
        f"{what}: every latent failed ({len(failed)} of {len(records)}; first error: {errors[0][:200]}); "
        f"the records are in {path}; fix the cause and rerun the same command to try them again"
    )


def refuse_all_failed(what: str, records: list[dict], good, path) -> None:
    """A run in which no latent succeeded and some failed is an error, not a success (exit 2, one line)."""
    message = all_failed(what, records, good, path)
    if message:
        raise UserError(message)
