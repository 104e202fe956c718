"""Examples of one latent: windows of context around its activations, and windows where it is silent.

A window is `window` tokens (default 32) of one cache row. Around an activation peak at row
position p the window starts at p - peak_index (default peak_index = window * 3 // 4, so 24 tokens
of left context and 7 of right context: the LM reads left to right, so the evidence for a latent is
mostly before it), shifted as little as needed to stay inside the row; `Example.peak` says where
the peak ended up.

Activating windows are found by cutting each row into non-overlapping blocks of `window` tokens,
taking each block's strongest activation as a candidate peak (strongest first), and keeping a
candidate's window only if the candidate is the strongest activation inside it and it overlaps no
window already kept. Sets, all disjoint in (row, position) — no token appears in two sets:
  - explain:          the top `n_explain` windows by peak (or a quantile sample: explain_sampling)
  - score_activating: `n_score_activating` windows sampled evenly over `n_quantiles` activation
                      quantiles of the REMAINING activating windows
  - score_random:     windows with no activation of this latent, at random positions
  - score_hard:       hard negatives: windows where the latents with the most similar decoder
                      directions fire strongly but this latent does not fire at all
A latent with fewer than `min_explain` + `min_score` activating windows is reported as too rare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..features.latent_cache import LatentCache

SETS = ("explain", "activating", "random", "hard")  # the example sets of a latent, in record order


@dataclass
class ExampleConfig:
    window: int = 32  # tokens per example
    peak_index: int | None = None  # where the peak sits in the window (default window*3//4)
    n_explain: int = 40  # examples shown to the explainer
    explain_sampling: str = "top"  # top | quantiles
    n_score_activating: int = 50  # activating examples for each scorer
    n_score_random: int = 25  # random non-activating examples
    n_score_hard: int = 25  # hard negatives (similar latents fire, this one does not)
    n_quantiles: int = 10  # activation quantiles for sampling scoring examples
    n_neighbours: int = 10  # similar latents searched for hard negatives
    min_explain: int = 5  # fewer explanation examples than this: the latent is not explained
    min_score: int = 5  # fewer activating scoring examples than this: not scored
    seed: int = 0

    @property
    def peak(self) -> int:
        return self.window * 3 // 4 if self.peak_index is None else self.peak_index

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    row: int  # cache row
    start: int  # first position of the window in the row
    tokens: list[int]  # token ids [window]
    acts: list[float]  # this latent's activation at each window token [window]
    peak: int  # index in the window of the peak (activating) or -1
    kind: str  # explain | activating | random | hard
    quantile: int = -1  # activation quantile bin of an activating scoring example (0 = weakest)

    @property
    def id(self) -> str:
        return f"{self.row}:{self.start}"

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0

    @property
    def activating(self) -> bool:
        return self.kind in ("explain", "activating")

    def span(self) -> tuple[int, int, int]:
        return self.row, self.start, self.start + len(self.tokens)


@dataclass
class LatentExamples:
    latent: int
    explain: list[Example] = field(default_factory=list)
    activating: list[Example] = field(default_factory=list)
    random: list[Example] = field(default_factory=list)
    hard: list[Example] = field(default_factory=list)
    n_windows: int = 0  # activating windows found
    skip_reason: str | None = None

    @property
    def negatives(self) -> list[Example]:
        return self.random + self.hard

    @property
    def scoring(self) -> list[Example]:
        return self.activating + self.negatives

    def ids(self) -> dict[str, list[str]]:
        return {k: [e.id for e in getattr(self, k)] for k in SETS}

    def to_dict(self) -> dict:
        """Compact JSON form (activations to 6 significant digits) stored in RUN/examples.jsonl, so a
        run can be scored on a machine without its latent cache."""
        d = {"latent": self.latent, "n_windows": self.n_windows}
        for k in SETS:
            d[k] = [
                [e.row, e.start, e.tokens, [float(f"{a:.6g}") for a in e.acts], e.peak, e.quantile]
                for e in getattr(self, k)
            ]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LatentExamples:
        sets = {
            k: [
                Example(row, start, tokens, acts, peak, k, quantile)
                for row, start, tokens, acts, peak, quantile in d[k]
            ]
            for k in SETS
        }
        return cls(d["latent"], n_windows=d["n_windows"], **sets)


def _window_start(peak_pos: int, ctx: int, cfg: ExampleConfig) -> int:
    return int(min(max(0, peak_pos - cfg.peak), max(0, ctx - cfg.window)))


def activating_windows(rows, pos, vals, ctx: int, cfg: ExampleConfig) -> list[tuple[int, int, int, float]]:
    """(row, start, peak position, peak value) of non-overlapping windows, strongest first.

    Candidates are the strongest activation of each block of `window` tokens, strongest first; a
    candidate becomes a window only if it is the strongest activation inside its own window and the
    window does not overlap one already taken, so every window's peak is its seed."""
    if len(rows) == 0:
        return []
    dense: dict[int, np.ndarray] = {}
    for r, p, v in zip(rows.tolist(), pos.tolist(), vals.tolist()):
        dense.setdefault(r, np.zeros(ctx, np.float32))[p] = v
    block = pos // cfg.window
    key = rows * (ctx // cfg.window + 1) + block
    order = np.lexsort((-vals, key))  # within each block, strongest first
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    sel = order[first]
    sel = sel[np.argsort(-vals[sel], kind="stable")]
    out, taken = [], {}
    for i in sel:
        r, p, v = int(rows[i]), int(pos[i]), float(vals[i])
        s = _window_start(p, ctx, cfg)
        if dense[r][s : s + cfg.window].max() > v:
            continue
        if any(abs(s - s2) < cfg.window for s2 in taken.get(r, ())):
            continue
        taken.setdefault(r, []).append(s)
        out.append((r, s, p, v))
    return out


def _quantile_sample(windows: list, n: int, n_q: int, rng: np.random.Generator) -> list[tuple[tuple, int]]:
    """n windows spread evenly over n_q quantile bins of peak value (windows are strongest first)."""
    if not windows or n <= 0:
        return []
    asc = windows[::-1]  # weakest first
    bins = np.array_split(np.arange(len(asc)), n_q)
    per = [n // n_q + (1 if q < n % n_q else 0) for q in range(n_q)]
    out = []
    for q, (idx, k) in enumerate(zip(bins, per)):
        if len(idx) == 0:
            continue
        pick = rng.choice(idx, size=min(k, len(idx)), replace=False)
        out += [(asc[i], q) for i in sorted(pick)]
    return out


class ExampleSampler:
    """Builds LatentExamples for the latents of one dictionary in a cache."""

    def __init__(self, cache: LatentCache, name: str, cfg: ExampleConfig | None = None):
        self.cache, self.name, self.cfg = cache, name, cfg or ExampleConfig()
        self.ctx = int(cache.manifest["context"])
        if self.cfg.window > self.ctx:
            from ..errors import UserError

            raise UserError(f"--window {self.cfg.window} is longer than the cache rows ({self.ctx} tokens)")
        if not 0 <= self.cfg.peak < self.cfg.window:
            from ..errors import UserError

            raise UserError(f"--peak-index must be in 0..{self.cfg.window - 1}")
        self.tokens = cache.tokens
        self._dec = cache.decoder(name)
        if self._dec is not None:
            self._dec = self._dec / self._dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self._fires = cache.fire_counts(name)

    def _example(self, row: int, start: int, acts_rows, kind: str, quantile: int = -1, peak_pos: int = -1) -> Example:
        toks = [int(t) for t in self.tokens[row, start : start + self.cfg.window]]
        acts = [float(a) for a in acts_rows.get(row, np.zeros(self.ctx, np.float32))[start : start + self.cfg.window]]
        return Example(row, start, toks, acts, peak_pos - start if peak_pos >= 0 else -1, kind, quantile)

    def neighbours(self, latent: int) -> list[int]:
        """Latents whose decoder direction is most similar (cosine), excluding dead ones."""
        if self._dec is None:
            return []
        sims = self._dec @ self._dec[latent]
        sims[latent] = -2
        sims[self._fires == 0] = -2
        k = min(self.cfg.n_neighbours, len(sims) - 1)
        return [int(i) for i in sims.topk(k).indices if sims[i] > -2]

    def sample(self, latent: int) -> LatentExamples:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, latent])
        rows, pos, vals = self.cache.latent_records(self.name, latent)
        out = LatentExamples(latent)
        wins = activating_windows(rows, pos, vals, self.ctx, cfg)
        out.n_windows = len(wins)
        if len(wins) < cfg.min_explain + cfg.min_score:
            out.skip_reason = (
                f"too few activating examples: {len(wins)} windows "
                f"(needs {cfg.min_explain} to explain + {cfg.min_score} to score)"
            )
            return out
        # dense activations of this latent on the rows it touches
        acts_rows: dict[int, np.ndarray] = {}
        for r, p, v in zip(rows, pos, vals):
            acts_rows.setdefault(int(r), np.zeros(self.ctx, np.float32))[int(p)] = v
        # explanation set: top (or quantiles), leaving at least min_score windows for scoring
        n_exp = min(cfg.n_explain, len(wins) - cfg.min_score)
        if cfg.explain_sampling == "quantiles":
            exp = [w for w, _ in _quantile_sample(wins, n_exp, cfg.n_quantiles, rng)]
        else:
            exp = wins[:n_exp]
        exp_set = set((w[0], w[1]) for w in exp)
        rest = [w for w in wins if (w[0], w[1]) not in exp_set]
        out.explain = [self._example(r, s, acts_rows, "explain", peak_pos=p) for r, s, p, _ in exp]
        out.activating = [
            self._example(r, s, acts_rows, "activating", q, p)
            for (r, s, p, _), q in _quantile_sample(rest, cfg.n_score_activating, cfg.n_quantiles, rng)
        ]
        used = {(e.row, e.start) for e in out.explain + out.activating}
        fired_rows = {int(r): set(pos[rows == r].tolist()) for r in np.unique(rows)}

        def silent(r: int, s: int) -> bool:
            """No activation of this latent in the window, and no overlap with a used window."""
            if any(s - cfg.window < s2 < s + cfg.window for r2, s2 in used if r2 == r):
                return False
            f = fired_rows.get(r)
            return not f or not any(s <= p < s + cfg.window for p in f)

        # hard negatives: peaks of similar latents where this one is silent
        cands = []
        for nb in self.neighbours(latent):
            nr, npos, nv = self.cache.latent_records(self.name, nb)
            top = np.argsort(-nv, kind="stable")[: 4 * cfg.n_score_hard]
            cands += [(float(nv[i]), int(nr[i]), int(npos[i])) for i in top]
        cands.sort(reverse=True)
        for _, r, p in cands:
            if len(out.hard) >= cfg.n_score_hard:
                break
            s = _window_start(p, self.ctx, cfg)
            if silent(r, s):
                out.hard.append(self._example(r, s, acts_rows, "hard"))
                used.add((r, s))
        # random negatives
        n_rows, tries = self.tokens.shape[0], 0
        while len(out.random) < cfg.n_score_random and tries < 50 * cfg.n_score_random:
            tries += 1
            r = int(rng.integers(n_rows))
            s = int(rng.integers(0, self.ctx - cfg.window + 1))
            if silent(r, s):
                out.random.append(self._example(r, s, acts_rows, "random"))
                used.add((r, s))
        if len(out.activating) < cfg.min_score:
            out.skip_reason = f"too few activating scoring examples ({len(out.activating)} < {cfg.min_score})"
        return out
