"""Search over one SAE's features (a FeatureStore), one page of results at a time.

A query is matched three ways, each ranked list after the one before:
  - an id (`26` or `#26`): that feature first, so a user can jump to a feature by its number;
  - by=text: features whose explanation holds every word of the query (features that fire first);
  - by=token: features whose strongest activating tokens or promoted tokens are the query.
An empty query lists every feature by its interpretation score (the first scorer's headline value, scorers
sorted by name, best first), then the unscored ones by firing density, densest first: what a user most
wants to read comes first. Results come in pages (`offset`, `limit`) with the total, never silently cut.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import UserError

ID = re.compile(r"#?(\d{1,9})")
MAX_LIMIT = 500


def headline_score(rec) -> float | None:
    """The first scorer's headline value of an interpretation record (None: no score that succeeded)."""
    for sc in rec.scores if rec is not None else []:
        if sc.ok and sc.value is not None:
            return float(sc.value)
    return None


def by_score(store) -> list[int]:
    """Every feature: the scored ones by score (best first), then the rest by firing density."""
    scored = sorted(
        (-v, i)
        for i, rec in store.explanations.items()
        if 0 <= i < store.d_sae and (v := headline_score(rec)) is not None
    )
    head = [i for _, i in scored]
    seen = set(head)
    return head + [int(i) for i in np.argsort(-store.freq, kind="stable") if int(i) not in seen]


def ranked(store, query: str, by: str = "text") -> list[int]:
    """Feature ids matching `query`, best first (see the module docstring)."""
    if by not in ("text", "token"):
        raise UserError(f"search by {by!r}: use 'text' or 'token'")
    q = query.strip().lower()
    if not q:
        return by_score(store)
    m = ID.fullmatch(q)
    first = [int(m.group(1))] if m and int(m.group(1)) < store.d_sae else []
    hits = []
    if by == "text":
        words = q.split()
        for i, rec in store.explanations.items():
            e = (rec.explanation or "").lower()
            if e and all(w in e for w in words) and 0 <= i < store.d_sae:
                hits.append((0 if store.freq[i] > 0 else 1, -e.count(words[0]), i))
    else:
        for i in range(store.d_sae):
            toks, ptoks = store._search_top[i], store._search_prom[i]
            rank = next((r for r, t in enumerate(toks) if t == q), None)
            if rank is None and q in ptoks:
                rank = 10 + ptoks.index(q)
            if rank is None:
                rank = next((20 + r for r, t in enumerate(toks) if q in t), None)
            if rank is not None:
                hits.append((rank, -float(store.max_act[i]), i))
    hits.sort()
    return first + [i for *_, i in hits if i not in first]


def search_page(store, query: str, by: str = "text", offset: int = 0, limit: int = 50) -> dict:
    """One page of results: {"results": summary rows, "total": matches, "offset", "limit", "order"}."""
    if not (isinstance(offset, int) and offset >= 0):
        raise UserError(f"search offset must be a whole number, 0 or more; got {offset!r}")
    if not (isinstance(limit, int) and 1 <= limit <= MAX_LIMIT):
        raise UserError(f"search limit must be 1..{MAX_LIMIT}; got {limit!r}")
    ids = ranked(store, query, by)
    return {
        "results": [store.summary(i) for i in ids[offset : offset + limit]],
        "total": len(ids),
        "offset": offset,
        "limit": limit,
        "order": "score, then density" if not query.strip() else "match",
    }
