"""Issue 13: find codebook codes whose examples share a topic (for the steering demonstration).

A code's activation is 1 wherever it is chosen, so there is no "top" example: this reads a latent
cache (`saelab cache`), and for each code of moderate frequency ranks it by how concentrated the
words around its positions are (the share of its examples' context windows containing the code's
most common context word, stopwords and the firing token itself left out: a topic, not a token).
It prints the best candidates with sample contexts, for a person to pick one and steer with it.

    python bench/codebook_topics.py CACHE_DIR [--dict NAME] [--top 8] [--examples 6]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import numpy as np

from saelab.features.latent_cache import LatentCache
from saelab.models import load_model

STOP = set(
    "the a an of to and in is it that for on as with by be are was this at or from not but have has had "
    "which you we they he she his her its their our your i if so can will would there been were all one "
    "what when who more also into than then them these those such some any no about out up only other".split()
)


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in STOP]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--dict", default=None)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--min-freq", type=float, default=2e-4)
    ap.add_argument("--max-freq", type=float, default=5e-3)
    a = ap.parse_args()
    cache = LatentCache.open(a.cache)
    name = a.dict or cache.sae_names[0]
    tok = load_model(cache.manifest.get("model_spec") or "embedded").tokenizer
    freq = cache.firing_frequency(name)
    cands = np.nonzero((freq >= a.min_freq) & (freq <= a.max_freq))[0]
    rng = np.random.default_rng(0)
    scored = []
    for j in cands:
        rows, pos, _ = cache.latent_records(name, int(j))
        if len(rows) < 8:
            continue
        pick = rng.choice(len(rows), size=min(40, len(rows)), replace=False)
        ctx = [tok.decode(cache.tokens[r, max(0, p - a.window) : p + 2]) for r, p in zip(rows[pick], pos[pick])]
        firing = {tok.decode(cache.tokens[r, p : p + 1]).strip().lower() for r, p in zip(rows[pick], pos[pick])}
        docs = Counter(w for c in ctx for w in set(words(c)) if w not in firing)
        if not docs:
            continue
        word, n = docs.most_common(1)[0]
        scored.append((n / len(ctx), int(j), word, len(rows), ctx))
    scored.sort(reverse=True)
    for share, j, word, n, ctx in scored[: a.top]:
        print(f"\n=== code {j}: fires {n} times; {share:.0%} of sampled contexts contain {word!r}")
        for c in ctx[: a.examples]:
            print("   ", repr(c))


if __name__ == "__main__":
    main()
