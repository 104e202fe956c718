"""The local Hugging Face chat model as an LLM client (see client_base.py for the interface)."""

from __future__ import annotations

import copy
import math
import threading

import torch

from ..errors import UserError
from .client_base import YES_NO, Completion, LLMClient
from .prompts import Messages


class LocalClient(LLMClient):
    """A Hugging Face chat model in this process (default: the embedded SmolLM2-135M-Instruct)."""

    name = "local"
    supports_logprobs = True

    def __init__(
        self, model: str = "embedded", batch_size: int = 8, max_context: int | None = None, lm=None, device: str = "cpu"
    ):
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
    def generate(self, prompts, max_tokens=64, temperature=0.0, prefill=None, stop=None) -> list[Completion]:
        """`stop()`: checked after every generated token; True ends the generation there (a server
        whose clients have all disconnected)."""
        out: list[Completion | None] = [None] * len(prompts)
        encoded = []
        for i, p in enumerate(prompts):
            ids = self._encode(self.template(p, prefill))
            if len(ids) + max_tokens > self.max_context:
                out[i] = Completion(
                    None, len(ids), 0, f"context too long: {len(ids)} prompt tokens + {max_tokens} > {self.max_context}"
                )
                self._account(len(ids), failed=True)
            else:
                encoded.append((i, ids))
        model = self.lm.model
        for b in range(0, len(encoded), self.batch_size):
            batch = encoded[b : b + self.batch_size]
            n = max(len(ids) for _, ids in batch)
            input_ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(batch), n, dtype=torch.long)
            for r, (_, ids) in enumerate(batch):  # left padding
                input_ids[r, n - len(ids) :] = torch.tensor(ids)
                mask[r, n - len(ids) :] = 1
            kw = dict(do_sample=temperature > 0, max_new_tokens=max_tokens, pad_token_id=self.pad_id)
            if stop is not None:
                from transformers import StoppingCriteria, StoppingCriteriaList

                class _Stop(StoppingCriteria):
                    def __call__(self, input_ids, scores, **_):
                        return torch.full(
                            (input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device
                        )

                kw["stopping_criteria"] = StoppingCriteriaList([_Stop()])
            if temperature > 0:
                kw["temperature"] = temperature
            else:
                kw.update(temperature=None, top_p=None, top_k=None)
            with self._infer_lock:
                gen = model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kw)[
                    :, n:
                ].cpu()
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
                model(
                    input_ids=torch.tensor([first[:lcp]], device=self.device),
                    **cache_kw(model, prefix_cache),
                    use_cache=True,
                    logits_to_keep=1,
                )
            else:
                lcp = 0
            for b in range(0, len(ok), self.batch_size):
                batch = ok[b : b + self.batch_size]
                suf = [ids_list[i][lcp:] for i in batch]
                n = max(len(s) for s in suf)
                x = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
                mask = torch.zeros(len(batch), lcp + n, dtype=torch.long)
                mask[:, :lcp] = 1
                for r, s in enumerate(suf):
                    x[r, : len(s)] = torch.tensor(s)
                    mask[r, lcp : lcp + len(s)] = 1
                kw = {}
                if prefix_cache is not None:
                    cache = copy.deepcopy(prefix_cache)
                    cache.batch_repeat_interleave(len(batch))
                    kw = {**cache_kw(model, cache), "use_cache": True}
                last = torch.tensor([len(s) - 1 for s in suf])
                # the LM head only at the positions read (not at every suffix position)
                keep, where = torch.unique(last, return_inverse=True)
                logits = model(
                    input_ids=x.to(self.device),
                    attention_mask=mask.to(self.device),
                    logits_to_keep=keep.to(self.device),
                    **kw,
                ).logits  # [B, k, vocab]
                lp = torch.log_softmax(logits[torch.arange(len(batch)), where.to(self.device)].float(), dim=-1).cpu()
                for r, i in enumerate(batch):
                    out[i] = {
                        name: float(torch.logsumexp(lp[r, ids], 0)) if ids else -math.inf for name, ids in cids.items()
                    }
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
                batch = ok[b : b + self.batch_size]
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
