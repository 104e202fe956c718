"""HTTP LLM clients: any OpenAI-compatible server, and Anthropic (see client_base.py for the interface)."""

from __future__ import annotations

import inspect
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import UserError
from .client_base import YES_NO, Completion, LLMClient, checked_reply


class _RemoteClient(LLMClient):
    """Shared by the HTTP clients: a thread pool, retries with exponential backoff, accounting, and
    two bounds per run: at most `retry_budget` retries in all, and after `outage_after` requests in a
    row that failed every try the server counts as down (`self.down`): later requests fail at once
    and the pipeline stops the run with a clear message instead of sending thousands more."""

    retryable: tuple = ()

    def __init__(
        self,
        model: str,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        price_in: float = 0.0,
        price_out: float = 0.0,
        retry_budget: int = 100,
        outage_after: int = 3,
    ):
        super().__init__()
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise UserError("--concurrency must be >= 1, --max-retries >= 0 and --timeout > 0")
        self.model, self.concurrency, self.timeout = model, concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.price_in, self.price_out = price_in, price_out  # USD per million tokens
        self.retry_budget, self.outage_after = retry_budget, outage_after
        self._retries_used = self._gave_up_in_a_row = 0
        self.down: str | None = None  # why the server counts as down

    def _cost(self, pt: int, ct: int) -> float:
        return (pt * self.price_in + ct * self.price_out) / 1e6

    def _may_retry(self) -> bool:
        with self._lock:
            if self.down or self._retries_used >= self.retry_budget:
                return False
            self._retries_used += 1
            return True

    def _with_retries(self, fn):
        """-> (result or None, error or None, retries)."""
        if self.down:
            return None, f"not sent: {self.down}", 0
        for attempt in range(self.max_retries + 1):
            try:
                r = fn()
                with self._lock:
                    self._gave_up_in_a_row = 0
                return r, None, attempt
            except self.retryable as e:  # connection errors, timeouts, 429, 5xx
                err = f"{type(e).__name__}: {e}"
                if attempt == self.max_retries or not self._may_retry():
                    break
                time.sleep(self.backoff * (2**attempt) * (0.5 + random.random()))
            except Exception as e:  # bad request (e.g. context too long), malformed reply: no retry
                return None, f"{type(e).__name__}: {e}", attempt
        with self._lock:
            self._gave_up_in_a_row += 1
            if self._gave_up_in_a_row >= self.outage_after and not self.down:
                self.down = (
                    f"the server failed {self._gave_up_in_a_row} requests in a row, every retry included (last: {err})"
                )
        return None, f"gave up after {attempt + 1} tries: {err}", attempt

    def _map(self, fn, items):
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))


class OpenAIClient(_RemoteClient):
    """Any OpenAI-compatible chat server: vLLM, llama.cpp server, OpenRouter, OpenAI, `saelab serve-llm`."""

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        logprobs: bool = True,
        **kw,
    ):
        try:
            import openai
        except ImportError as e:
            raise UserError("the openai client needs `pip install openai` (or `pip install saelab[interpret]`)") from e
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        super().__init__(model or os.environ.get("SAELAB_LLM_MODEL", "default"), **kw)
        self.base_url = base_url
        key = api_key or os.environ.get("OPENAI_API_KEY") or ("none" if base_url else None)
        if key is None:
            raise UserError("the openai client needs --base-url (a local server) or OPENAI_API_KEY")
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=self.timeout, max_retries=0)
        self.retryable = (
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.RateLimitError,
            openai.InternalServerError,
        )
        self.supports_logprobs = logprobs

    def describe(self) -> dict:
        return {"client": "openai", "model": self.model, "base_url": self.base_url}

    def _one(self, messages, max_tokens, temperature) -> Completion:
        def call():
            return self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
            )

        r, err, retries = self._with_retries(call)
        pt = ct = 0
        text = None
        if r is not None:
            pt, ct = _usage(r, "prompt_tokens"), _usage(r, "completion_tokens")
            try:
                text = r.choices[0].message.content
                if text is not None and not isinstance(text, str):
                    raise TypeError(type(text).__name__)
            except (AttributeError, IndexError, TypeError, KeyError):  # e.g. a 200 with a non-JSON body
                text, err = None, f"malformed reply (not a chat completion: {str(r)[:200]!r})"
            text, err = checked_reply(text, err, max_tokens)
        self._account(pt, ct, failed=err is not None, retries=retries, cost=self._cost(pt, ct))
        return Completion(text, pt, ct, err)

    def generate(self, prompts, max_tokens=64, temperature=0.0, prefill=None) -> list[Completion]:
        # prefill is not part of the OpenAI chat API: the explainer's parser does not rely on it
        return self._map(lambda m: self._one(m, max_tokens, temperature), prompts)

    def _one_lp(self, messages, choices) -> dict | None:
        def call():
            return self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20
            )

        r, err, retries = self._with_retries(call)
        out, pt, ct = None, 0, 0
        if r is not None:
            pt, ct = _usage(r, "prompt_tokens"), _usage(r, "completion_tokens")
            try:
                top = r.choices[0].logprobs.content[0].top_logprobs
                table = {}
                for t in top:
                    table[t.token] = max(table.get(t.token, -math.inf), t.logprob)
                out = {
                    name: _logsumexp([table[v] for v in variants if v in table]) for name, variants in choices.items()
                }
            except (AttributeError, IndexError, TypeError):
                pass  # a reply without log-probabilities: out stays None, counted as a failure below
        self._account(pt, ct, failed=out is None, retries=retries, cost=self._cost(pt, ct))
        return out

    def choice_logprobs(self, prompts, choices=YES_NO) -> list[dict | None]:
        return self._map(lambda m: self._one_lp(m, choices), prompts)


def _usage(r, key: str) -> int:
    v = getattr(getattr(r, "usage", None), key, 0)
    return v if isinstance(v, int) else 0


def _logsumexp(xs: list[float]) -> float:
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


class AnthropicClient(_RemoteClient):
    """Claude via the `anthropic` package (needs ANTHROPIC_API_KEY; no log-probabilities, so the
    judged scorers parse generated answers).

    The request carries only what the installed SDK's `messages.create` accepts: SDK 2.x has no
    `temperature` (passing it raised TypeError on every call), 0.x had one, so it is sent when the
    signature has it and the reply's sampling is the server's otherwise (`describe()` says which). An
    empty system prompt is left out, not sent as null. A model that refuses an assistant prefill (a
    400 naming prefill) gets the request again without it, and the rest of the run sends none: the
    explainer's parser reads a reply with or without its `[EXPLANATION]:` marker."""

    name = "anthropic"
    supports_logprobs = False

    def __init__(self, model: str | None = None, api_key: str | None = None, base_url: str | None = None, **kw):
        # no built-in model name: providers retire names, and a default that expires fails every latent
        model = model or os.environ.get("SAELAB_LLM_MODEL")
        if not model:
            raise UserError(
                "--client anthropic needs a model: pass --llm MODEL (a model id your Anthropic account "
                "serves today) or set $SAELAB_LLM_MODEL; there is no default, since model names are retired"
            )
        try:
            import anthropic
        except ImportError as e:
            raise UserError("the anthropic client needs `pip install anthropic`") from e
        super().__init__(model, **kw)
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise UserError("the anthropic client needs ANTHROPIC_API_KEY in the environment")
        self.base_url = base_url
        self.client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=self.timeout, max_retries=0)
        self.retryable = (
            anthropic.APIConnectionError,
            anthropic.APITimeoutError,
            anthropic.RateLimitError,
            anthropic.InternalServerError,
        )
        self._bad_request = anthropic.BadRequestError
        self.sends_temperature = _accepts(self.client.messages.create, "temperature")
        self.prefill_refused = False  # set once the model answered a prefill with a 400

    def describe(self) -> dict:
        return {
            "client": "anthropic",
            "model": self.model,
            "base_url": self.base_url,
            "temperature_sent": self.sends_temperature,  # False: this SDK has no temperature (server default)
        }

    def _request(self, system: str, msgs: list, max_tokens: int, temperature: float):
        kw = dict(model=self.model, messages=msgs, max_tokens=max_tokens)
        if system:
            kw["system"] = system
        if self.sends_temperature and temperature is not None:
            kw["temperature"] = temperature
        return self.client.messages.create(**kw)

    def _call(self, system: str, msgs: list, prefill: str | None, max_tokens: int, temperature: float):
        """-> (reply, the prefill it continues or None)."""
        if prefill and not self.prefill_refused:
            try:
                return self._request(
                    system, [*msgs, {"role": "assistant", "content": prefill}], max_tokens, temperature
                ), prefill
            except self._bad_request as e:
                if "prefill" not in str(e).lower():
                    raise
                with self._lock:
                    self.prefill_refused = True
        return self._request(system, msgs, max_tokens, temperature), None

    def _one(self, messages, max_tokens, temperature, prefill) -> Completion:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        msgs = [m for m in messages if m["role"] != "system"]
        r, err, retries = self._with_retries(lambda: self._call(system, msgs, prefill, max_tokens, temperature))
        text, pt, ct = None, 0, 0
        if r is not None:
            r, continued = r
            pt, ct = _usage(r, "input_tokens"), _usage(r, "output_tokens")
            try:
                text = "".join(getattr(b, "text", "") or "" for b in r.content)
            except (AttributeError, TypeError):
                text, err = None, "malformed reply (no content)"
            text, err = checked_reply(text, err, max_tokens)
            if err is None and continued:
                text = continued + text
        self._account(pt, ct, failed=err is not None, retries=retries, cost=self._cost(pt, ct))
        return Completion(text, pt, ct, err)

    def generate(self, prompts, max_tokens=64, temperature=0.0, prefill=None) -> list[Completion]:
        return self._map(lambda m: self._one(m, max_tokens, temperature, prefill), prompts)


def _accepts(fn, keyword: str) -> bool:
    """Does `fn` take `keyword` (by name, or through **kwargs)?"""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
