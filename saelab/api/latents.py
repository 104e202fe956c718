"""The latent cache as an object for notebooks: where a latent fires, how often, and what it writes.

`saelab.LatentCache.open(path)` wraps the cache reader (features/latent_cache.py, which owns the format;
`.reader` is it) and adds what a researcher asks of one latent: its top activating examples as text,
its density, and the tokens its decoder direction promotes / suppresses (features/logit_lens.py, the
same numbers a feature page shows). Text and logit effects need the model the cache was made with: it
is loaded once, when first needed (or pass `model=`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..features.latent_cache import LatentCache as _Reader

__all__ = ["LatentCache", "LogitEffects", "TopExample"]


@dataclass
class TopExample:
    """One activating window of a latent: `window` tokens of one cache row around a peak.

    `text`: the window decoded; `tokens`: each token as a string [window]; `token_ids` [window];
    `activations`: the latent's activation at each token [window] (0 where it is silent; the units of
    the dictionary's latents); `row`, `start`: cache row and first position of the window; `peak`: index
    of the peak inside the window; `value`: the activation there (the window's largest)."""

    text: str
    tokens: list[str]
    activations: list[float]
    token_ids: list[int]
    row: int
    start: int
    peak: int
    value: float


@dataclass
class LogitEffects:
    """Tokens a latent's decoder direction most promotes / suppresses through the final norm and the
    unembedding (the direct path only): lists of (token string, token id, logit), strongest first."""

    promoted: list[tuple[str, int, float]]
    suppressed: list[tuple[str, int, float]]


class LatentCache:
    """A finished latent cache folder (`saelab cache` / `saelab.cache_features`).

    Methods take `dictionary=None`: the cache's only dictionary, else one of `.dictionaries`."""

    def __init__(self, reader: _Reader, model: Any = None, device: str = "cpu"):
        self.reader = reader  # features.latent_cache.LatentCache: the full reader API (records, stats, decoders)
        self.device = device
        self._model = model

    @classmethod
    def open(cls, path: str | Path, model: Any = None, device: str = "cpu") -> LatentCache:
        """Open a complete cache folder (an unfinished or foreign folder: a UserError saying what to run).
        `model`: the model the cache was made with, already loaded (a `saelab.Model` or a LoadedModel);
        default: loaded from the cache manifest's `model_spec` on `device` when text or logits are asked."""
        return cls(_Reader.open(path), model, device)

    # ------------------------------------------------------------ what the cache holds
    @property
    def path(self) -> Path:
        """The cache folder."""
        return self.reader.path

    @property
    def manifest(self) -> dict:
        """manifest.json: model, corpus, context, rows, tokens, positions, sink rules, dictionaries."""
        return self.reader.manifest

    @property
    def dictionaries(self) -> list[str]:
        """Names of the cached dictionaries (SAEs, and `neurons:<hookpoint>` baselines)."""
        return list(self.reader.sae_names)

    @property
    def tokens(self) -> np.ndarray:
        """int32 [rows, context]: the cached token ids (memory-mapped)."""
        return self.reader.tokens

    @property
    def n_positions(self) -> int:
        """Cached positions that are not sinks / outliers: the denominator of `density`."""
        return int(self.manifest["n_positions"])

    def _name(self, dictionary: str | None) -> str:
        if dictionary is not None:
            self.reader.info(dictionary)  # a UserError naming the cache's dictionaries
            return dictionary
        if len(self.reader.sae_names) > 1:
            raise UserError(f"{self.path} holds several dictionaries; pass dictionary=, one of {self.dictionaries}")
        return self.reader.sae_names[0]

    def d_sae(self, dictionary: str | None = None) -> int:
        """Number of latents of the dictionary."""
        return self.reader.d_sae(self._name(dictionary))

    def records(self, latent: int, dictionary: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every cached activation of `latent`: (rows int64 [n], positions int64 [n], values float32 [n]),
        sorted by (row, position)."""
        return self.reader.latent_records(self._name(dictionary), int(latent))

    # ------------------------------------------------------------ per latent
    def density(self, latent: int, dictionary: str | None = None) -> float:
        """Fraction of the cached (non-sink) token positions on which `latent` is active, in [0, 1]."""
        name = self._name(dictionary)
        self.reader.latent_records(name, int(latent))  # the range check, with its message
        return float(self.reader.fire_counts(name)[int(latent)] / max(1, self.n_positions))

    def top_examples(
        self, latent: int, n: int = 10, dictionary: str | None = None, window: int = 32
    ) -> list[TopExample]:
        """The `n` strongest activating windows of `latent`, strongest first: non-overlapping windows of
        `window` tokens (at most the cache's context), each around its own peak with about 3/4 of it as
        left context (interpret/examples.py `activating_windows`: the windows `saelab explain` shows)."""
        from ..interpret.examples import ExampleConfig, activating_windows

        if n < 1 or window < 1:
            raise UserError("top_examples needs n >= 1 and window >= 1")
        ctx = int(self.manifest["context"])
        rows, pos, vals = self.records(latent, dictionary)
        cfg = ExampleConfig(window=min(window, ctx))
        tok = self._loaded().tokenizer
        out = []
        for r, s, p, v in activating_windows(rows, pos, vals, ctx, cfg)[:n]:
            ids = [int(t) for t in self.tokens[r, s : s + cfg.window]]
            acts = np.zeros(len(ids), np.float32)
            on_row = rows == r
            inside = on_row & (pos >= s) & (pos < s + len(ids))
            acts[pos[inside] - s] = vals[inside]
            out.append(
                TopExample(
                    text=tok.decode(ids),
                    tokens=[tok.decode([t]) for t in ids],
                    activations=acts.tolist(),
                    token_ids=ids,
                    row=int(r),
                    start=int(s),
                    peak=int(p - s),
                    value=float(v),
                )
            )
        return out

    def logit_effects(self, latent: int, k: int = 10, dictionary: str | None = None) -> LogitEffects:
        """The `k` tokens the latent's decoder direction most promotes and most suppresses (logits through
        the final norm and unembedding; a cross-layer transcoder's latent: its decoders summed over the
        layers it writes to, as its feature page shows). A UserError when the cache has no decoder for the
        dictionary or its site is not as wide as the residual stream."""
        from ..features.logit_lens import logit_lens

        name = self._name(dictionary)
        self.reader.latent_records(name, int(latent))  # the range check
        W = self._decoder(name)
        lm = self._loaded()
        lens = logit_lens(lm.model, W[int(latent) : int(latent) + 1], k) if W is not None else None
        if lens is None:
            raise UserError(
                f"{name}: no logit lens (no decoder recorded, or its site is not the residual stream's width)"
            )
        tok = lm.tokenizer

        def ranked(pair) -> list[tuple[str, int, float]]:
            ids, values = pair
            return [(tok.decode([int(t)]), int(t), float(v)) for t, v in zip(ids[0], values[0])]

        return LogitEffects(ranked(lens[0]), ranked(lens[1]))

    # ------------------------------------------------------------ helpers
    def _decoder(self, name: str):
        """[d_sae, d_model] the direction each latent writes to the residual stream (a CLT: its decoders
        summed over its target layers, read from its folder)."""
        info = self.reader.info(name)
        if info.get("clt"):
            from ..features.clt_features import summed_decoders
            from ..sae.folder import open_sae

            return summed_decoders(open_sae(Path(info["source"]), self.device).sae)
        return self.reader.decoder(name)

    def _loaded(self):
        """The model (as models.LoadedModel: `.model`, `.tokenizer`), loaded from the manifest once."""
        from ..models import LoadedModel, load_model

        m = self._model
        if m is None:
            m = self._model = load_model(self.manifest["model_spec"], device=self.device)
        elif not isinstance(m, LoadedModel):  # a saelab.Model: its torch module and tokenizer
            m = self._model = LoadedModel(m.torch_model, m.tokenizer, self.manifest.get("model_name", ""))
        return m

    def __repr__(self) -> str:
        return f"saelab.{self.reader!r}"
