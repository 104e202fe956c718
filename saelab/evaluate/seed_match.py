"""The numbers behind `saelab seeds` and `saelab bench --metrics seeds`: which latent of dictionary B matches each
latent of dictionary A, how well (decoder cosine, activation correlation on shared tokens) and the
matched fraction by frequency band.

A latent of A is matched when its nearest decoder direction in B has cosine >= a threshold (0.7,
Paulo & Belrose 2025) and, where activations were measured, the two latents' activations correlate
>= a threshold on the same tokens: two directions can agree while the latents fire on different
tokens (an encoder that learned another feature), and the correlation catches that. Bands are the
density of A's latent (fraction of tokens it fires on) in decades, because rare latents are where
seeds disagree most and one overall fraction hides it.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..data import TokenRows
from ..errors import UserError
from ..models import collect_activations
from ..sae import SparseCoder
from ..sinks import SinkConfig, special_ids
from .metrics import batches, heldout_selection, sae_sink_mask

# (label, lowest density, highest density): a latent falls in the first band whose [low, high) holds it
BANDS = (
    ("dead", 0.0, 1e-12),
    ("<1e-4", 1e-12, 1e-4),
    ("1e-4..1e-3", 1e-4, 1e-3),
    ("1e-3..1e-2", 1e-3, 1e-2),
    ("1e-2..1e-1", 1e-2, 1e-1),
    (">=1e-1", 1e-1, math.inf),
)


DESCRIPTIONS = {
    "frac_matched": "fraction of A's latents whose nearest decoder direction in B has cosine >= cos_threshold "
    "and whose activations correlate >= corr_threshold with that latent on the same tokens",
    "frac_matched_decoder": "the same with the decoder cosine only",
    "bands": "A's latents by density (fraction of tokens they fire on), in decades; 'all' counts alive latents",
    "median_fires": "median number of tokens a band's latents fired on: a correlation over a handful of fires is "
    "noise, so rare bands need more --tokens",
}


def unit_decoder(sae: SparseCoder) -> torch.Tensor:
    """Decoder rows as unit vectors [d_sae, d_out] (saved weights are in raw activation space)."""
    w = sae.W_dec.detach().float()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def best_matches(da: torch.Tensor, db: torch.Tensor, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit row of da [na, d]: (max cosine to the unit rows of db [nb, d], index of that row)."""
    cos, idx = torch.empty(da.shape[0]), torch.empty(da.shape[0], dtype=torch.long)
    for s in range(0, da.shape[0], block):
        sim = da[s : s + block] @ db.T
        v = sim.max(1)
        cos[s : s + block], idx[s : s + block] = v.values, v.indices
    return cos, idx


class CodeMoments:
    """Running sums of one dictionary's dense codes over tokens: count, sum, sum of squares and firing
    counts per latent (float64: sums over a million tokens)."""

    def __init__(self, d: int):
        self.n = 0
        self.s1 = torch.zeros(d, dtype=torch.float64)
        self.s2 = torch.zeros(d, dtype=torch.float64)
        self.fires = torch.zeros(d, dtype=torch.float64)

    def add(self, codes: torch.Tensor) -> None:  # codes [tokens, d]
        c = codes.double()
        self.n += c.shape[0]
        self.s1 += c.sum(0)
        self.s2 += c.pow(2).sum(0)
        self.fires += (c > 0).sum(0)

    def density(self) -> torch.Tensor:
        return self.fires / max(self.n, 1)


class PairMoments:
    """Sum over tokens of a_i * b_match(i) for each latent i of A and its matched latent of B."""

    def __init__(self, idx: torch.Tensor):
        self.idx = idx
        self.sxy = torch.zeros(idx.shape[0], dtype=torch.float64)

    def add(self, codes_a: torch.Tensor, codes_b: torch.Tensor) -> None:  # [tokens, d_a], [tokens, d_b]
        self.sxy += (codes_a.double() * codes_b[:, self.idx].double()).sum(0)

    def correlation(self, a: CodeMoments, b: CodeMoments) -> torch.Tensor:
        """Pearson correlation per latent of A with its match [d_a]; NaN where either never varies."""
        n, j = a.n, self.idx
        cov = n * self.sxy - a.s1 * b.s1[j]
        var_a, var_b = n * a.s2 - a.s1.pow(2), n * b.s2[j] - b.s1[j].pow(2)
        ok = (var_a > 1e-12 * n * n) & (var_b > 1e-12 * n * n)
        r = torch.full_like(cov, math.nan)
        r[ok] = (cov[ok] / (var_a[ok] * var_b[ok]).sqrt()).clamp(-1, 1)
        return r.float()


def band_of(density: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(label, bool mask [d]) per frequency band."""
    return [(label, (density >= lo) & (density < hi)) for label, lo, hi in BANDS]


def matched_mask(
    cos: torch.Tensor, corr: torch.Tensor | None, cos_threshold: float, corr_threshold: float
) -> torch.Tensor:
    """Bool [d_a]: decoder cosine >= its threshold and (when measured) correlation >= its threshold
    (a latent whose correlation is undefined, one that never fires, is not matched)."""
    m = cos >= cos_threshold
    if corr is not None:
        m &= torch.nan_to_num(corr, nan=-2.0) >= corr_threshold
    return m


def _part(
    cos: torch.Tensor,
    corr: torch.Tensor | None,
    keep: torch.Tensor,
    thr: float,
    cthr: float,
    fires: torch.Tensor | None = None,
) -> dict:
    n = int(keep.sum())
    out: dict = {"n": n}
    if not n:
        return out
    if fires is not None:
        out["median_fires"] = float(fires[keep].median())
    c = cos[keep]
    out["frac_matched_decoder"] = int((c >= thr).sum()) / n
    out["median_cosine"] = float(c.median())
    if corr is not None:
        r = corr[keep]
        out["frac_matched"] = int(matched_mask(c, r, thr, cthr).sum()) / n
        ok = ~torch.isnan(r)
        out["median_correlation"] = float(r[ok].median()) if ok.any() else None
    else:
        out["frac_matched"] = out["frac_matched_decoder"]
    return out


def stability(
    cos: torch.Tensor,
    corr: torch.Tensor | None = None,
    density: torch.Tensor | None = None,
    cos_threshold: float = 0.7,
    corr_threshold: float = 0.7,
    tokens: int | None = None,
) -> dict:
    """Matched fractions of A's latents: over all alive latents (all latents without a density) and,
    with a density, per band. `frac_matched` needs both criteria, `frac_matched_decoder` the cosine only;
    with the number of tokens the density was measured on, each part says its latents' median fires."""
    alive = torch.ones_like(cos, dtype=torch.bool) if density is None else density > 0
    fires = None if density is None or tokens is None else (density * tokens).round()
    res = {"all": _part(cos, corr, alive, cos_threshold, corr_threshold, fires)}
    if density is not None:
        res["bands"] = {
            label: _part(cos, corr, m, cos_threshold, corr_threshold, fires) for label, m in band_of(density)
        }
    return res


class SeedGroup:
    """Every ordered pair of a group of dictionaries at one site: decoder matches at once, activation
    moments from `measure` (one model pass, every dictionary read on the tokens none of them leaves out),
    then `pairs()`: one row of `stability` numbers per pair."""

    def __init__(self, saes: list[tuple[SparseCoder, SinkConfig | dict]], labels: list[str], cos_thr, corr_thr):
        self.saes, self.labels, self.cos_thr, self.corr_thr = saes, labels, cos_thr, corr_thr
        units = [unit_decoder(s) for s, _ in saes]
        self.order = [(i, j) for i in range(len(saes)) for j in range(len(saes)) if i != j]
        self.found = {p: best_matches(units[p[0]], units[p[1]]) for p in self.order}  # (cosine, index in B)
        self.moments: list[CodeMoments] | None = None
        self.cross: dict[tuple[int, int], PairMoments] = {}
        self.tokens = 0

    @torch.no_grad()
    def measure(self, model, tokenizer, rows: TokenRows, tokens: int, batch_rows: int, device: str = "cpu") -> None:
        special = special_ids(tokenizer)
        saes = [s for s, _ in self.saes]
        hooks = sorted({h for s in saes for h in (s.cfg.hookpoint, s.cfg.out_hookpoint) if h})
        self.moments = [CodeMoments(s.cfg.d_sae) for s in saes]
        self.cross = {p: PairMoments(self.found[p][1]) for p in self.order}
        sel = heldout_selection(rows, tokens)
        for ids in tqdm(list(batches(rows, sel, batch_rows, device)), desc="seeds", leave=False):
            acts = collect_activations(model, ids, hooks)
            drop = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
            for s, sink in self.saes:
                drop |= sae_sink_mask(s, sink, acts, ids, special)
            codes = [s.encode_raw(acts[s.cfg.hookpoint][~drop].float()).to_dense().cpu() for s in saes]
            for m, c in zip(self.moments, codes):
                m.add(c)
            for (i, j), pm in self.cross.items():
                pm.add(codes[i], codes[j])
        self.tokens = self.moments[0].n
        if self.tokens == 0:
            raise UserError("no held-out token is kept by every dictionary (all are sink positions)")

    def pairs(self) -> list[dict]:
        out = []
        for i, j in self.order:
            cos, _ = self.found[(i, j)]
            m = self.moments
            corr = self.cross[(i, j)].correlation(m[i], m[j]) if m else None
            dens = m[i].density().float() if m else None
            row = {"a": self.labels[i], "b": self.labels[j]}
            out.append(row | stability(cos, corr, dens, self.cos_thr, self.corr_thr, self.tokens if m else None))
        return out
