"""Explainers: an LLM explainer (examples with activating tokens marked) and a statistical baseline.

The LLM explainer asks for one line `[EXPLANATION]: ...`; the local client prefills that marker
so even a small model answers in the form. A reply without the marker (when nothing was
prefilled), an empty phrase or an overlong one is a parse failure: recorded as a failure with the
raw reply, never saved as an explanation.

The statistical explainer needs no LLM: it names the tokens that carry most of the activation
mass in the explanation examples and the tokens that most often precede the peak. It is the
baseline an LLM explanation must beat, and a usable explainer when no strong LLM is available.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass

from .client_base import LLMClient
from .examples import Example, LatentExamples
from .prompts import EXPLANATION_PREFILL, explain_messages, render

MAX_EXPLANATION_CHARS = 200


@dataclass
class ExplainResult:
    explanation: str | None
    raw: str | None
    error: str | None
    seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TokenText:
    """Decodes token ids one by one into display pieces (cached)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._cache: dict[int, str] = {}

    def piece(self, t: int) -> str:
        if t not in self._cache:
            self._cache[t] = self.tok.decode([t])
        return self._cache[t]

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.piece(int(t)) for t in ids]

    def text(self, ids: list[int]) -> str:
        return "".join(self.pieces(ids)).replace("\n", "\\n")


def parse_explanation(reply: str | None, prefilled: bool) -> tuple[str | None, str | None]:
    """-> (explanation, error). Takes the text after the last `[EXPLANATION]:` (or the whole reply
    when the marker was prefilled), first non-empty line, stripped of quotes and markdown; a first
    line ending in ':' is a lead-in, so the next line (without its list marker) is used instead."""
    if reply is None or not reply.strip():
        return None, "empty reply"
    m = list(re.finditer(r"\[?EXPLANATION\]?\s*:", reply, re.I))
    if m:
        body = reply[m[-1].end() :]
    elif prefilled:
        body = reply
    else:
        return None, "no `[EXPLANATION]:` line in the reply"
    lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    if not lines:
        return None, "empty explanation"
    text = lines[0]
    if text.endswith(":"):  # a lead-in ("The marked tokens have the following features:"): use what follows
        if len(lines) < 2:
            return None, "only a lead-in line, no explanation after it"
        text = re.sub(r"^(\d+[.)]|[-*•])\s*", "", lines[1])
    text = text.replace("**", "").strip().strip("\"'`*").strip()
    if not text or not re.search(r"[A-Za-z0-9]", text):
        return None, "empty explanation"
    if len(text) > MAX_EXPLANATION_CHARS:
        return None, f"explanation longer than {MAX_EXPLANATION_CHARS} characters"
    return text, None


class LLMExplainer:
    name = "llm"

    def __init__(
        self,
        client: LLMClient,
        tokenizer,
        show_activations: bool = False,
        max_tokens: int = 48,
        temperature: float = 0.0,
    ):
        self.client, self.text = client, TokenText(tokenizer)
        self.show_activations, self.max_tokens, self.temperature = show_activations, max_tokens, temperature
        self.prefill = EXPLANATION_PREFILL if client.name in ("local", "anthropic") else None

    def describe(self) -> dict:
        return {
            "explainer": "llm",
            "show_activations": self.show_activations,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **self.client.describe(),
        }

    def messages(self, ex: LatentExamples):
        top = max((e.max_act for e in ex.explain), default=0.0)
        texts = [
            render(self.text.pieces(e.tokens), e.acts, top, show_activations=self.show_activations) for e in ex.explain
        ]
        return explain_messages(texts)

    def explain_many(self, batch: list[LatentExamples]) -> list[ExplainResult]:
        """One generation call for several latents (the local client batches them)."""
        t = time.time()
        comps = self.client.generate(
            [self.messages(ex) for ex in batch],
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            prefill=self.prefill,
        )
        per = (time.time() - t) / max(1, len(batch))
        out = []
        for c in comps:
            if c.error:
                out.append(ExplainResult(None, c.text, c.error, per, c.prompt_tokens, c.completion_tokens))
                continue
            expl, err = parse_explanation(c.text, self.prefill is not None)
            out.append(ExplainResult(expl, c.text, err, per, c.prompt_tokens, c.completion_tokens))
        return out


class StatisticalExplainer:
    """Top activating tokens and the tokens before the peak, from the explanation examples only."""

    name = "stats"

    def __init__(self, tokenizer, n_tokens: int = 5, n_context: int = 3):
        self.text, self.n_tokens, self.n_context = TokenText(tokenizer), n_tokens, n_context

    def describe(self) -> dict:
        return {"explainer": "stats", "n_tokens": self.n_tokens, "n_context": self.n_context}

    def _show(self, t: int) -> str:
        return repr(self.text.piece(t).replace("\n", "\\n"))

    def explain_one(self, ex: LatentExamples) -> ExplainResult:
        t0 = time.time()
        mass: Counter = Counter()
        before: Counter = Counter()
        for e in ex.explain:
            for tok, a in zip(e.tokens, e.acts):
                if a > 0:
                    mass[tok] += a
            if e.peak > 0:
                before[e.tokens[e.peak - 1]] += 1
        if not mass:
            return ExplainResult(None, None, "no activating tokens in the explanation examples", time.time() - t0)
        total = sum(mass.values())
        top = mass.most_common(self.n_tokens)
        parts = ", ".join(self._show(t) for t, _ in top)
        share = sum(v for _, v in top) / total
        expl = f"the tokens {parts}"
        ctx = [t for t, c in before.most_common(self.n_context) if c >= 2]
        if ctx:
            expl += f" (often after {', '.join(self._show(t) for t in ctx)})"
        raw = f"top tokens carry {100 * share:.0f}% of the activation mass"
        return ExplainResult(expl, raw, None, time.time() - t0)

    def explain_many(self, batch: list[LatentExamples]) -> list[ExplainResult]:
        return [self.explain_one(ex) for ex in batch]


def example_text(text: TokenText, e: Example) -> str:
    return text.text(e.tokens)
