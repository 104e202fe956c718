"""Everything a feature dashboard shows, for one SAE, computed once and served per feature.

`FeatureStore.build(sae_dir, cache=..., tokens=...)` reads the latent cache (features/latent_cache.py)
when one is given; without one it builds a small cache itself with the cache builder over
`tokens` held-out tokens (kept under $SAELAB_CACHE/view_caches, reused on the next run), so an
SAE with no cache and no explanations still gets full dashboards. Explanations and scores come from
an interpretation run (interpret/records.py `interpretations`, checked against this SAE).

Per feature (`view(i)`): firing density, activation histogram, top activating examples and
examples from equal-width activation ranges (tokens with this feature's activation at each
position; each example's whole line as context), an interpretation run's example sets
(example_sets.py), the tokens its decoder direction most promotes / suppresses through the final norm
and the unembedding (as the model's family defines them, families.py), the explanation and
scores when an interpretation record exists, and the nearest features by decoder cosine. A cross-layer
transcoder's latent (features/clt_features.py) also shows its encoder layer and its decoder norm into
every layer it writes to (`clt`); its logit effects read its decoders summed over those layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..features.cache_config import LatentCacheConfig
from ..features.clt_features import clt_sites, is_clt, own_decoders, summed_decoders, writes
from ..features.latent_cache import LatentCache
from ..features.latent_cache_writer import write_latent_cache
from ..features.logit_lens import logit_lens
from ..interpret.records import Interpretation, check_run_folder, interpretations
from ..models import LoadedModel, layer_index
from ..sae.folder import open_sae
from ..storage import cache_dir, fingerprint
from .example_sets import read_example_sets, shown_sets
from .feature_search import headline_score, search_page

N_TOP = 10  # top activating examples
N_RANGES = 4  # activation ranges (equal width in (0, max])
N_PER_RANGE = 3
LINE_BEFORE, LINE_AFTER = 24, 8  # an example's context: its whole line, at most this many tokens either side
N_LOGITS = 10
N_NEAREST = 6
HIST_BINS = 24


@dataclass
class ShownExample:
    """One activating window as a feature page shows it, as token strings (interpret.examples.Example
    is the same window by cache position, for explaining and scoring)."""

    tokens: list[str]  # window of token strings
    acts: list[float]  # this feature's activation at each token of the window
    peak: int  # index of the example's own position inside the window
    value: float


class FeatureStore:
    """Dashboard data of one SAE (`name`), backed by a LatentCache."""

    def __init__(
        self,
        name: str,
        sae_dir: Path,
        sae,
        cfg_json: dict,
        cache: LatentCache,
        dict_name: str,
        tokenizer,
        model,
        explanations: dict[int, Interpretation],
        example_sets: dict[int, dict] | None = None,
    ):
        self.name, self.sae_dir, self.sae, self.cfg_json = name, Path(sae_dir), sae, cfg_json
        self.cache, self.dict_name, self.tok, self.model = cache, dict_name, tokenizer, model
        self.explanations = explanations
        self.example_sets = example_sets or {}  # latent -> an interpretation run's example sets (example_sets.py)
        self.d_sae = sae.cfg.d_sae
        self.freq = cache.firing_frequency(dict_name).astype(np.float64)  # [d_sae]
        self.max_act = cache.max_activation(dict_name).astype(np.float32)  # [d_sae]
        self.n_positions = int(cache.manifest["n_positions"])
        self._tokstr: dict[int, str] = {}
        self.clt = is_clt(sae)
        if self.clt:  # the cache's decoder norms per target layer (the CLT's own when the cache lacks them)
            norms = cache.decoder_norms(dict_name)
            self.decoder_norms = norms if norms is not None else sae.decoder_norms()
            self.model_layers = [layer_index(model, h) for h in clt_sites(sae)[1]]
        self._logits()
        self._nearest()
        self._top_tokens()

    # ------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        sae_dir,
        cache: str | Path | None = None,
        tokens: int = 16_384,
        explanations=None,
        model=None,
        tokenizer=None,
        name: str | None = None,
        progress: bool = True,
    ) -> FeatureStore:
        sae_dir = Path(sae_dir)
        folder = open_sae(sae_dir)
        if explanations is not None and Path(explanations).is_dir():
            check_run_folder(Path(explanations))  # a training run given as --explanations: before any model loads
        sae, cfg_json = folder.sae, folder.cfg
        lm = (
            LoadedModel(model, tokenizer, folder.provenance.model_name)
            if model is not None and tokenizer is not None
            else None
        )
        if cache is None:  # a cache gets built: with the model the pages use, loaded once
            lm = lm or folder.open_model()
        lc, dict_name = ensure_cache(sae_dir, sae.cfg.d_sae, cache, tokens, progress, loaded_model=lm)
        lm = lm or folder.open_model()  # a given cache is checked before the model loads
        model, tokenizer, cache = lm.model, lm.tokenizer, lc.path
        if explanations is None and (sae_dir / "explanations.jsonl").exists():
            explanations = sae_dir / "explanations.jsonl"  # a run written into the SAE folder, or a plain file
        return cls(
            name or sae_dir.name,
            sae_dir,
            sae,
            cfg_json,
            lc,
            dict_name,
            tokenizer,
            model,
            interpretations(explanations, sae_dir, sae.cfg.d_sae) if explanations is not None else {},
            read_example_sets(explanations, sae.cfg.d_sae),
        )

    def _logits(self) -> None:
        """Promoted / suppressed tokens of every decoder direction through final norm + unembedding
        (features/logit_lens.py); a CLT latent: its decoders summed over every target layer (the direct
        path, features/clt_features.py)."""
        W = summed_decoders(self.sae) if self.clt else self.sae.W_dec.detach()  # [d_sae, d_out]
        lens = logit_lens(self.model, W, N_LOGITS)
        self.promoted, self.suppressed = lens if lens is not None else (None, None)

    @torch.no_grad()
    def _nearest(self) -> None:
        W = own_decoders(self.sae) if self.clt else self.sae.W_dec.detach()  # what the cache records as decoder
        W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
        ids, vals = [], []
        k = min(N_NEAREST, W.shape[0] - 1)
        for s in range(0, W.shape[0], 1024):
            sim = W[s : s + 1024] @ W.T  # [chunk, d_sae]
            sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0
            t = sim.topk(k, dim=1)
            ids.append(t.indices), vals.append(t.values)
        self.nearest = (torch.cat(ids), torch.cat(vals))

    def _top_tokens(self) -> None:
        """The distinct tokens of each feature's strongest activations (for search by token)."""
        self.top_tokens: list[list[str]] = []
        toks = self.cache.tokens
        for j in range(self.d_sae):
            rows, pos, val = self.cache.latent_records(self.dict_name, j)
            order = np.argsort(-val)[:50]
            seen: list[str] = []
            for r, p in zip(rows[order], pos[order]):
                s = self.token_str(int(toks[r, p]))
                if s not in seen:
                    seen.append(s)
                if len(seen) >= 5:
                    break
            self.top_tokens.append(seen)
        # Lower-cased, stripped token lists for search by token (built once; a search is one scan).
        prom = self.promoted[0] if self.promoted is not None else None
        self._search_top = [[t.strip().lower() for t in toks] for toks in self.top_tokens]
        self._search_prom = (
            [[self.token_str(int(t)).strip().lower() for t in prom[i, :5]] for i in range(self.d_sae)]
            if prom is not None
            else [[] for _ in range(self.d_sae)]
        )

    # ------------------------------------------------------------ helpers
    def token_str(self, tid: int) -> str:
        s = self._tokstr.get(tid)
        if s is None:
            s = self.tok.decode([tid])
            self._tokstr[tid] = s
        return s

    @property
    def site_label(self) -> str:
        """Where the features live, in words (a CLT: its layers, not its L joined sites)."""
        if not self.clt:
            return self.sae.cfg.hookpoint
        a, b = self.model_layers[0], self.model_layers[-1]
        return f"cross-layer transcoder over layers {a}-{b} ({self.sae.n_per_layer} per layer; MLP inputs -> outputs)"

    @torch.no_grad()
    def dense_acts(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """[T, d_sae] every feature's activation on row 0 of the activations at `self.sites` (a CLT: layer
        l's latents from layer l's MLP input)."""
        if self.clt:
            return torch.cat([self.sae.encode_layer(l, acts[h][0]).to_dense() for l, h in enumerate(self.sites)], 1)
        return self.sae.encode_raw(acts[self.sites[0]][0]).to_dense()

    @property
    def sites(self) -> list[str]:
        """The sites the features read (a CLT: each layer's MLP input)."""
        return clt_sites(self.sae)[0] if self.clt else [self.sae.cfg.hookpoint]

    def check_latent(self, i: int) -> int:
        if not 0 <= i < self.d_sae:
            raise UserError(f"feature {i} does not exist: {self.name} has features 0..{self.d_sae - 1}")
        return i

    def explanation(self, i: int) -> str | None:
        rec = self.explanations.get(i)
        return rec.explanation if rec is not None else None

    def summary(self, i: int) -> dict:
        """One row of the index / search results."""
        return {
            "id": i,
            "density": float(self.freq[i]),
            "max_act": float(self.max_act[i]),
            "explanation": self.explanation(i),
            "score": headline_score(self.explanations.get(i)),
            "top_tokens": self.top_tokens[i],
            "promoted": self._token_list(self.promoted, i, 5),
        }

    def _token_list(self, pair, i: int, n: int = N_LOGITS) -> list[dict]:
        if pair is None:
            return []
        ids, vals = pair
        return [{"token": self.token_str(int(t)), "logit": float(v)} for t, v in zip(ids[i, :n], vals[i, :n])]

    def line_window(self, r: int, p: int) -> tuple[int, int]:
        """[a, b) of the line that holds position p of cache row r: from the token after the last newline
        before p to the first token after p that holds a newline (included), at most LINE_BEFORE tokens
        before p and LINE_AFTER after (a paragraph of web text is one long line)."""
        toks = self.cache.tokens[r]
        a, b = p, p + 1
        while a > 0 and p - a < LINE_BEFORE and "\n" not in self.token_str(int(toks[a - 1])):
            a -= 1
        while b < len(toks) and b - p <= LINE_AFTER and "\n" not in self.token_str(int(toks[b - 1])):
            b += 1
        return a, b

    def _example(self, rows, pos, vals, r: int, p: int, v: float) -> ShownExample:
        a, b = self.line_window(r, p)  # the whole line as context
        lo, hi = np.searchsorted(rows, r, "left"), np.searchsorted(rows, r, "right")  # records sorted by (row, pos)
        acts = np.zeros(b - a, dtype=np.float32)
        for pp, vv in zip(pos[lo:hi], vals[lo:hi]):
            if a <= pp < b:
                acts[pp - a] = vv
        toks = [self.token_str(int(t)) for t in self.cache.tokens[r, a:b]]
        return ShownExample(toks, acts.tolist(), p - a, float(v))

    # ------------------------------------------------------------ the page
    def view(self, i: int) -> dict:
        i = self.check_latent(i)
        rows, pos, vals = self.cache.latent_records(self.dict_name, i)
        top = np.argsort(-vals, kind="stable")[:N_TOP]
        examples = [self._example(rows, pos, vals, int(rows[j]), int(pos[j]), float(vals[j])) for j in top]
        ranges = []
        mx = float(vals.max()) if len(vals) else 0.0
        rng = np.random.default_rng(i)
        for b in range(N_RANGES - 1, -1, -1):
            lo, hi = mx * b / N_RANGES, mx * (b + 1) / N_RANGES
            sel = np.nonzero((vals > lo) & (vals <= hi))[0]
            pick = rng.choice(sel, size=min(N_PER_RANGE, len(sel)), replace=False) if len(sel) else []
            ranges.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "count": int(len(sel)),
                    "examples": [
                        self._example(rows, pos, vals, int(rows[j]), int(pos[j]), float(vals[j])) for j in pick
                    ],
                }
            )
        counts, edges = np.histogram(vals, bins=HIST_BINS, range=(0.0, mx if mx > 0 else 1.0))
        near_i, near_v = self.nearest
        rec = self.explanations.get(i)
        return {
            "sae": self.name,
            "id": i,
            "d_sae": self.d_sae,
            "hookpoint": self.sites[i // self.sae.n_per_layer] if self.clt else self.sae.cfg.hookpoint,
            "clt": writes(self.decoder_norms, i, self.sae.n_per_layer, self.model_layers) if self.clt else None,
            "logit_note": (
                "its decoders summed over the layers it writes to, through the final norm and unembedding "
                "(the direct path: what the later layers do with it is left out)"
                if self.clt
                else "decoder direction through the final norm and unembedding"
            ),
            "density": float(self.freq[i]),
            "fires": int(len(vals)),
            "n_positions": self.n_positions,
            "max_act": mx,
            "mean_act": float(vals.mean()) if len(vals) else 0.0,
            "hist": {"counts": counts.tolist(), "edges": edges.tolist()},
            "top": examples,
            "ranges": ranges,
            "promoted": self._token_list(self.promoted, i),
            "suppressed": self._token_list(self.suppressed, i),
            "explanation": self.explanation(i),
            "scores": [asdict(sc) for sc in rec.scores] if rec else [],
            "explained_by": rec.run if rec else None,
            "example_sets": shown_sets(self.example_sets.get(i), self.token_str, ShownExample),
            "nearest": [
                {
                    "id": int(j),
                    "cos": float(c),
                    "explanation": self.explanation(int(j)),
                    "top_tokens": self.top_tokens[int(j)][:3],
                }
                for j, c in zip(near_i[i], near_v[i])
            ],
        }

    def search(self, query: str, by: str = "text", limit: int = 50) -> list[dict]:
        """The first `limit` features matching `query` (view/feature_search.py: an id, explanation words
        with by=text, a token with by=token; an empty query lists them by score, then density)."""
        return search_page(self, query, by, 0, limit)["results"]


def ensure_cache(
    sae_dir: Path,
    d_sae: int,
    cache=None,
    tokens: int = 16_384,
    progress: bool = True,
    loaded_model: LoadedModel | None = None,
) -> tuple[LatentCache, str]:
    """The given latent cache, or one built once over `tokens` held-out tokens with the cache
    builder (kept under $SAELAB_CACHE/view_caches and reused) -> (cache, dictionary name). The
    builder opens the SAE's own model (`loaded_model`: it, already loaded) and held-out rows."""
    sae_dir = Path(sae_dir)
    if cache is None:
        if tokens < 1:
            raise UserError("--tokens must be positive")
        fp = fingerprint(str(sae_dir.resolve()), (sae_dir / "sae_weights.safetensors").stat().st_mtime_ns, tokens)
        cache = cache_dir() / "view_caches" / fp
        cfg = LatentCacheConfig(sae_dirs=[str(sae_dir)], tokens=tokens, out=str(cache), batch_rows=8)
        write_latent_cache(cfg, progress=progress, loaded_model=loaded_model)
    lc = LatentCache.open(cache)
    return lc, _find_dict(lc, sae_dir, d_sae)


def _find_dict(cache: LatentCache, sae_dir: Path, d_sae: int) -> str:
    want = str(sae_dir.resolve())
    for n in cache.sae_names:
        info = cache.info(n)
        if info.get("kind") == "sae" and str(Path(info.get("source", "")).resolve()) == want:
            return n
    if sae_dir.name in cache.sae_names and cache.d_sae(sae_dir.name) == d_sae:
        return sae_dir.name
    raise UserError(f"cache {cache.path} has no dictionary for {sae_dir} (it holds {cache.sae_names})")
