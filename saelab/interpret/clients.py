"""Pick an LLM client by name: `make_client("local" | "openai" | "anthropic", ...)`. The interface is
in client_base.py, the implementations in local_client.py and remote_clients.py."""

from __future__ import annotations

from ..errors import UserError
from .client_base import YES_NO, Completion, LLMClient, Usage, normalised_yes
from .local_client import LocalClient
from .remote_clients import AnthropicClient, OpenAIClient

__all__ = [
    "YES_NO",
    "AnthropicClient",
    "Completion",
    "LLMClient",
    "LocalClient",
    "OpenAIClient",
    "Usage",
    "make_client",
    "normalised_yes",
]


def make_client(
    kind: str = "local",
    model: str | None = None,
    base_url: str | None = None,
    concurrency: int = 4,
    timeout: float = 60.0,
    max_retries: int = 4,
    batch_size: int = 8,
    price_in: float = 0.0,
    price_out: float = 0.0,
    lm=None,
    device: str = "cpu",
) -> LLMClient:
    """kind: local | openai | anthropic (one option switches the whole pipeline to a strong model)."""
    if kind == "local":
        return LocalClient(model or "embedded", batch_size=batch_size, lm=lm, device=device)
    remote = dict(
        concurrency=concurrency, timeout=timeout, max_retries=max_retries, price_in=price_in, price_out=price_out
    )
    if kind == "openai":
        return OpenAIClient(model=model, base_url=base_url, **remote)
    if kind == "anthropic":
        return AnthropicClient(model=model, base_url=base_url, **remote)
    raise UserError(f"unknown --client {kind!r}; choose local, openai or anthropic")
