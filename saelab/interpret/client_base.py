"""LLM clients behind one interface: a local Hugging Face chat model, any OpenAI-compatible HTTP
server, and Anthropic.

    client.generate(prompts, max_tokens, temperature, prefill) -> [Completion]
    client.choice_logprobs(prompts, choices) -> [{choice: logprob} | None]   (None = failed)
    client.supports_logprobs, client.usage (calls, tokens, failures, retries, cost)

A failure (unreachable server, rate limit that outlasts the retries, malformed or empty reply,
prompt longer than the model's context) never raises: it comes back as a Completion with
`error` set (or None from choice_logprobs) so a long run records it for that latent and goes on.

`choice_logprobs` asks for the log-probability of the first token of each answer (e.g. Yes/No)
right after the prompt: one forward pass and no generation. The local client also runs the
longest common token prefix of a batch of prompts once and reuses its key/value cache for every
prompt (the instructions and the explanation are shared by all examples of a latent).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass

from .prompts import Messages


@dataclass
class Completion:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: int = 0
    retries: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class LLMClient:
    name = "base"
    supports_logprobs = False

    def __init__(self):
        self.usage = Usage()
        self._lock = threading.Lock()

    def _account(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        failed: bool = False,
        retries: int = 0,
        cost: float = 0.0,
    ) -> None:
        with self._lock:
            u = self.usage
            u.calls += 1
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            u.failures += int(failed)
            u.retries += retries
            u.cost_usd += cost

    def generate(
        self, prompts: list[Messages], max_tokens: int = 64, temperature: float = 0.0, prefill: str | None = None
    ) -> list[Completion]:
        raise NotImplementedError

    def choice_logprobs(self, prompts: list[Messages], choices: dict[str, list[str]]) -> list[dict | None]:
        raise NotImplementedError(f"the {self.name} client gives no log-probabilities")

    def describe(self) -> dict:
        return {"client": self.name}


CHARS_PER_TOKEN_CAP = 16  # a reply longer than 16 characters per requested token ignored max_tokens
MIN_REPLY_CAP = 4096


def checked_reply(text: str | None, err: str | None, max_tokens: int) -> tuple[str | None, str | None]:
    """A reply's text and error after the checks every client applies: an empty reply and one far
    longer than `max_tokens` allows (a server that ignores it: 5 MB) are failures; an over-long
    reply is kept cut to the cap, as the raw text of that failure."""
    if err is not None:
        return text, err
    if not (text or "").strip():
        return text, "empty reply"
    cap = max(MIN_REPLY_CAP, CHARS_PER_TOKEN_CAP * max_tokens)
    if len(text) > cap:
        return text[:cap], f"reply of {len(text):,} characters is over the cap of {cap:,} for max_tokens {max_tokens}"
    return text, None


def normalised_yes(lp: dict | None, yes: str = "yes", no: str = "no") -> float | None:
    """P(yes) / (P(yes) + P(no)) from choice log-probabilities (None when both are missing)."""
    if lp is None:
        return None
    a, b = lp.get(yes, -math.inf), lp.get(no, -math.inf)
    if a == -math.inf and b == -math.inf:
        return None
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb)


YES_NO = {"yes": ["Yes", " Yes", "yes", " yes", "YES"], "no": ["No", " No", "no", " no", "NO"]}


# ====================================================================== local
