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

import copy
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch

from ..errors import UserError
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

    def _account(self, prompt_tokens: int = 0, completion_tokens: int = 0, failed: bool = False,
                 retries: int = 0, cost: float = 0.0) -> None:
        with self._lock:
            u = self.usage
            u.calls += 1
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            u.failures += int(failed)
            u.retries += retries
            u.cost_usd += cost

    def generate(self, prompts: list[Messages], max_tokens: int = 64, temperature: float = 0.0,
                 prefill: str | None = None) -> list[Completion]:
        raise NotImplementedError

    def choice_logprobs(self, prompts: list[Messages], choices: dict[str, list[str]]) -> list[dict | None]:
        raise NotImplementedError(f"the {self.name} client gives no log-probabilities")

    def describe(self) -> dict:
        return {"client": self.name}


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


class LocalClient(LLMClient):
    """A Hugging Face chat model in this process (default: the embedded SmolLM2-135M-Instruct)."""

    name = "local"
    supports_logprobs = True

    def __init__(self, model: str = "embedded", batch_size: int = 8, max_context: int | None = None, lm=None,
                 device: str = "cpu"):
        super().__init__()
        from ..models import load_model

        self.lm = lm or load_model(model, device=device)
        self.device = next(self.lm.model.parameters()).device  # inputs are built on the CPU, then moved here
        self.model_spec = model
        self.tok = self.lm.tokenizer
        if getattr(self.tok, "chat_template", None) is None:
            raise UserError(f"model {model!r} has no chat template; the local client needs a chat model")
        self.batch_size = batch_size
        cfg_ctx = getattr(self.lm.model.config, "max_position_embeddings", 2048)
        self.max_context = min(max_context or cfg_ctx, cfg_ctx)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self._infer_lock = threading.Lock()  # one forward at a time (the server calls from threads)

    def describe(self) -> dict:
        return {"client": "local", "model": self.model_spec, "model_name": self.lm.name}

    def template(self, messages: Messages, prefill: str | None = None) -> str:
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + (prefill or "")

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts, max_tokens=64, temperature=0.0, prefill=None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(prompts)
        encoded = []
        for i, p in enumerate(prompts):
            ids = self._encode(self.template(p, prefill))
            if len(ids) + max_tokens > self.max_context:
                out[i] = Completion(None, len(ids), 0, f"context too long: {len(ids)} prompt tokens + {max_tokens} "
                                                       f"> {self.max_context}")
                self._account(len(ids), failed=True)
            else:
                encoded.append((i, ids))
        model = self.lm.model
        for b in range(0, len(encoded), self.batch_size):
            batch = encoded[b:b + self.batch_size]
            n = max(len(ids) for _, ids in batch)
            input_ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(batch), n, dtype=torch.long)
            for r, (_, ids) in enumerate(batch):  # left padding
                input_ids[r, n - len(ids):] = torch.tensor(ids)
                mask[r, n - len(ids):] = 1
            kw = dict(do_sample=temperature > 0, max_new_tokens=max_tokens, pad_token_id=self.pad_id)
            if temperature > 0:
                kw["temperature"] = temperature
            else:
                kw.update(temperature=None, top_p=None, top_k=None)
            with self._infer_lock:
                gen = model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                     **kw)[:, n:].cpu()
            for r, (i, ids) in enumerate(batch):
                seq = gen[r].tolist()
                if self.tok.eos_token_id in seq:
                    seq = seq[: seq.index(self.tok.eos_token_id)]
                while seq and seq[-1] == self.pad_id:
                    seq.pop()
                text = self.tok.decode(seq, skip_special_tokens=True)
                err = None if text.strip() else "empty reply"
                out[i] = Completion(text, len(ids), len(seq), err)
                self._account(len(ids), len(seq), failed=err is not None)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------ log-probabilities
    def _choice_ids(self, choices: dict[str, list[str]]) -> dict[str, list[int]]:
        out = {}
        for name, variants in choices.items():
            ids = {self._encode(v)[0] for v in variants if self._encode(v)}
            out[name] = sorted(ids)
        return out

    @torch.no_grad()
    def choice_logprobs(self, prompts, choices=YES_NO, prefill: str | None = None) -> list[dict | None]:
        """Log-probability of each choice's first token right after each prompt.

        The longest common token prefix of all prompts runs once; its KV cache is copied for each
        batch of suffixes (right-padded, so no real token ever attends to padding)."""
        from transformers import DynamicCache

        from .scorers.lm_util import cache_kw

        ids_list = [self._encode(self.template(p, prefill)) for p in prompts]
        cids = self._choice_ids(choices)
        out: list[dict | None] = [None] * len(prompts)
        ok = [i for i, ids in enumerate(ids_list) if len(ids) < self.max_context]
        for i in set(range(len(prompts))) - set(ok):
            self._account(len(ids_list[i]), failed=True)
        if not ok:
            return out
        lcp = min(len(ids_list[i]) for i in ok) - 1
        first = ids_list[ok[0]]
        for i in ok[1:]:
            ids = ids_list[i]
            j = 0
            while j < lcp and ids[j] == first[j]:
                j += 1
            lcp = j
        model = self.lm.model
        with self._infer_lock:
            prefix_cache = None
            if lcp >= 8 and len(ok) > 1:
                prefix_cache = DynamicCache()
                model(input_ids=torch.tensor([first[:lcp]], device=self.device), **cache_kw(model, prefix_cache), use_cache=True,
                      logits_to_keep=1)
            else:
                lcp = 0
            for b in range(0, len(ok), self.batch_size):
                batch = ok[b:b + self.batch_size]
                suf = [ids_list[i][lcp:] for i in batch]
                n = max(len(s) for s in suf)
                x = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
                mask = torch.zeros(len(batch), lcp + n, dtype=torch.long)
                mask[:, :lcp] = 1
                for r, s in enumerate(suf):
                    x[r, : len(s)] = torch.tensor(s)
                    mask[r, lcp: lcp + len(s)] = 1
                kw = {}
                if prefix_cache is not None:
                    cache = copy.deepcopy(prefix_cache)
                    cache.batch_repeat_interleave(len(batch))
                    kw = {**cache_kw(model, cache), "use_cache": True}
                last = torch.tensor([len(s) - 1 for s in suf])
                # the LM head only at the positions read (not at every suffix position)
                keep, where = torch.unique(last, return_inverse=True)
                logits = model(input_ids=x.to(self.device), attention_mask=mask.to(self.device),
                               logits_to_keep=keep.to(self.device), **kw).logits  # [B, k, vocab]
                lp = torch.log_softmax(logits[torch.arange(len(batch)), where.to(self.device)].float(), dim=-1).cpu()
                for r, i in enumerate(batch):
                    out[i] = {name: float(torch.logsumexp(lp[r, ids], 0)) if ids else -math.inf
                              for name, ids in cids.items()}
                    self._account(len(ids_list[i]), 0)
        return out


    @torch.no_grad()
    def top_logprobs(self, prompts: list[Messages], k: int = 20) -> list[list[tuple[str, float]] | None]:
        """The k most likely next tokens (text, logprob) after each prompt (used by `saelab serve-llm`)."""
        ids_list = [self._encode(self.template(p)) for p in prompts]
        out: list = [None] * len(prompts)
        ok = [i for i, ids in enumerate(ids_list) if len(ids) < self.max_context]
        with self._infer_lock:
            for b in range(0, len(ok), self.batch_size):
                batch = ok[b:b + self.batch_size]
                n = max(len(ids_list[i]) for i in batch)
                x = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
                for r, i in enumerate(batch):
                    x[r, : len(ids_list[i])] = torch.tensor(ids_list[i])
                logits = self.lm.model(input_ids=x.to(self.device)).logits.cpu()
                last = torch.tensor([len(ids_list[i]) - 1 for i in batch])
                lp = torch.log_softmax(logits[torch.arange(len(batch)), last].float(), dim=-1)
                vals, idx = lp.topk(k, dim=-1)
                for r, i in enumerate(batch):
                    out[i] = [(self.tok.decode([int(t)]), float(v)) for t, v in zip(idx[r], vals[r])]
                    self._account(len(ids_list[i]), 1)
        return out

    def prompt_tokens(self, messages: Messages) -> int:
        return len(self._encode(self.template(messages)))


# ====================================================================== HTTP clients


class _RemoteClient(LLMClient):
    """Shared by the HTTP clients: a thread pool, retries with exponential backoff, accounting."""

    retryable: tuple = ()

    def __init__(self, model: str, concurrency: int = 4, timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 1.0, price_in: float = 0.0, price_out: float = 0.0):
        super().__init__()
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise UserError("--concurrency must be >= 1, --max-retries >= 0 and --timeout > 0")
        self.model, self.concurrency, self.timeout = model, concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.price_in, self.price_out = price_in, price_out  # USD per million tokens

    def _cost(self, pt: int, ct: int) -> float:
        return (pt * self.price_in + ct * self.price_out) / 1e6

    def _with_retries(self, fn):
        """-> (result or None, error or None, retries)."""
        for attempt in range(self.max_retries + 1):
            try:
                return fn(), None, attempt
            except self.retryable as e:  # connection errors, timeouts, 429, 5xx
                err = f"{type(e).__name__}: {e}"
                if attempt < self.max_retries:
                    time.sleep(self.backoff * (2 ** attempt) * (0.5 + random.random()))
            except Exception as e:  # bad request (e.g. context too long), malformed reply: no retry
                return None, f"{type(e).__name__}: {e}", attempt
        return None, f"gave up after {self.max_retries + 1} tries: {err}", self.max_retries

    def _map(self, fn, items):
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))


class OpenAIClient(_RemoteClient):
    """Any OpenAI-compatible chat server: vLLM, llama.cpp server, OpenRouter, OpenAI, `saelab serve-llm`."""

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 logprobs: bool = True, **kw):
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
        self.retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                          openai.InternalServerError)
        self.supports_logprobs = logprobs

    def describe(self) -> dict:
        return {"client": "openai", "model": self.model, "base_url": self.base_url}

    def _one(self, messages, max_tokens, temperature) -> Completion:
        def call():
            return self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens,
                                                       temperature=temperature)

        r, err, retries = self._with_retries(call)
        pt = ct = 0
        text = None
        if r is not None:
            pt = getattr(r.usage, "prompt_tokens", 0) or 0 if r.usage else 0
            ct = getattr(r.usage, "completion_tokens", 0) or 0 if r.usage else 0
            try:
                text = r.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                err = "malformed reply (no choices)"
            if err is None and not (text or "").strip():
                err = "empty reply"
        self._account(pt, ct, failed=err is not None, retries=retries, cost=self._cost(pt, ct))
        return Completion(text, pt, ct, err)

    def generate(self, prompts, max_tokens=64, temperature=0.0, prefill=None) -> list[Completion]:
        # prefill is not part of the OpenAI chat API: the explainer's parser does not rely on it
        return self._map(lambda m: self._one(m, max_tokens, temperature), prompts)

    def _one_lp(self, messages, choices) -> dict | None:
        def call():
            return self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=1,
                                                       temperature=0.0, logprobs=True, top_logprobs=20)

        r, err, retries = self._with_retries(call)
        out, pt, ct = None, 0, 0
        if r is not None:
            pt = (r.usage.prompt_tokens or 0) if r.usage else 0
            ct = (r.usage.completion_tokens or 0) if r.usage else 0
            try:
                top = r.choices[0].logprobs.content[0].top_logprobs
                table = {}
                for t in top:
                    table[t.token] = max(table.get(t.token, -math.inf), t.logprob)
                out = {name: _logsumexp([table[v] for v in variants if v in table])
                       for name, variants in choices.items()}
            except (AttributeError, IndexError, TypeError):
                pass  # a reply without log-probabilities: out stays None, counted as a failure below
        self._account(pt, ct, failed=out is None, retries=retries, cost=self._cost(pt, ct))
        return out

    def choice_logprobs(self, prompts, choices=YES_NO) -> list[dict | None]:
        return self._map(lambda m: self._one_lp(m, choices), prompts)


def _logsumexp(xs: list[float]) -> float:
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


class AnthropicClient(_RemoteClient):
    """Claude via the `anthropic` package (needs ANTHROPIC_API_KEY; no log-probabilities, so the
    judged scorers parse generated answers)."""

    name = "anthropic"
    supports_logprobs = False

    def __init__(self, model: str | None = None, api_key: str | None = None, base_url: str | None = None, **kw):
        try:
            import anthropic
        except ImportError as e:
            raise UserError("the anthropic client needs `pip install anthropic`") from e
        super().__init__(model or os.environ.get("SAELAB_LLM_MODEL", "claude-3-5-haiku-latest"), **kw)
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise UserError("the anthropic client needs ANTHROPIC_API_KEY in the environment")
        self.client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=self.timeout, max_retries=0)
        self.retryable = (anthropic.APIConnectionError, anthropic.APITimeoutError, anthropic.RateLimitError,
                          anthropic.InternalServerError)

    def describe(self) -> dict:
        return {"client": "anthropic", "model": self.model}

    def _one(self, messages, max_tokens, temperature, prefill) -> Completion:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        msgs = [m for m in messages if m["role"] != "system"]
        if prefill:
            msgs = msgs + [{"role": "assistant", "content": prefill}]

        def call():
            return self.client.messages.create(model=self.model, system=system or None, messages=msgs,
                                               max_tokens=max_tokens, temperature=temperature)

        r, err, retries = self._with_retries(call)
        text, pt, ct = None, 0, 0
        if r is not None:
            pt, ct = r.usage.input_tokens or 0, r.usage.output_tokens or 0
            text = "".join(getattr(b, "text", "") for b in r.content)
            if not text.strip():
                err = "empty reply"
            elif prefill:
                text = prefill + text
        self._account(pt, ct, failed=err is not None, retries=retries, cost=self._cost(pt, ct))
        return Completion(text, pt, ct, err)

    def generate(self, prompts, max_tokens=64, temperature=0.0, prefill=None) -> list[Completion]:
        return self._map(lambda m: self._one(m, max_tokens, temperature, prefill), prompts)


def make_client(kind: str = "local", model: str | None = None, base_url: str | None = None,
                concurrency: int = 4, timeout: float = 60.0, max_retries: int = 4, batch_size: int = 8,
                price_in: float = 0.0, price_out: float = 0.0, lm=None, device: str = "cpu") -> LLMClient:
    """kind: local | openai | anthropic (one option switches the whole pipeline to a strong model)."""
    if kind == "local":
        return LocalClient(model or "embedded", batch_size=batch_size, lm=lm, device=device)
    remote = dict(concurrency=concurrency, timeout=timeout, max_retries=max_retries, price_in=price_in,
                  price_out=price_out)
    if kind == "openai":
        return OpenAIClient(model=model, base_url=base_url, **remote)
    if kind == "anthropic":
        return AnthropicClient(model=model, base_url=base_url, **remote)
    raise UserError(f"unknown --client {kind!r}; choose local, openai or anthropic")
