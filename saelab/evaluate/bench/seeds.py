"""Seeds: how many of one SAE's latents another SAE of the bench also has (seed stability, or agreement
between architectures / sparsities at the site): for each ordered pair of the bench's SAE folders, the
fraction of A's alive latents whose nearest decoder direction in B has cosine >= 0.7 and whose
activations correlate >= 0.7 with it on the same held-out tokens (--tokens of them), overall and by
A's density band (evaluate/seed_match.py; `saelab seeds` is the same as its own command). Baselines
are not compared. With one SAE folder it notes that it needs two."""

from __future__ import annotations

from ..seed_match import BANDS, DESCRIPTIONS, SeedGroup
from .metric import BenchState, Metric, Table

COS, CORR = 0.7, 0.7


def compute(b: BenchState) -> dict:
    cfg = b.cfg
    res = {"tokens": 0, "cos_threshold": COS, "corr_threshold": CORR, "pairs": [], "descriptions": DESCRIPTIONS}
    if len(b.folders) < 2:
        b.notes.append("seeds: needs two or more SAE folders (seeds, architectures or sparsities at the site)")
        return res
    group = SeedGroup([(f.sae, f.provenance.sink) for f in b.folders], list(b.names), COS, CORR)
    group.measure(b.lm.model, b.lm.tokenizer, b.rows, cfg.tokens, 16, cfg.device)
    return res | {"tokens": group.tokens, "pairs": group.pairs()}


def tables(js: dict) -> list[Table]:
    bands = [label for label, _, _ in BANDS if label != "dead"]
    header = ["A", "B", "matched", "decoder alone", "median corr"] + [f"matched {x}" for x in bands] + ["dead"]
    rows = []
    for p in js["pairs"]:
        al, bd = p["all"], p["bands"]
        by_band = [bd[x].get("frac_matched") if bd[x]["n"] else None for x in bands]
        rows.append(
            [p["a"], p["b"], al.get("frac_matched"), al.get("frac_matched_decoder"), al.get("median_correlation")]
            + by_band
            + [bd["dead"]["n"]]
        )
    title = (
        f"Seeds (latents of A matched in B: decoder cosine >= {COS} and correlation >= {CORR}, {js['tokens']} tokens)"
    )
    return [(title, header, rows)] if rows else []


METRIC = Metric(
    "seeds",
    "fraction of each SAE's latents matched by another SAE's (decoder cosine and activation correlation), by band",
    compute,
    tables,
    needs_model=True,
)
