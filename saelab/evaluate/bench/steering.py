"""Steering, offline (AxBench, Wu et al. 2025, without its LLM judge): for concepts drawn from the embedded
corpus (steering_concepts.py), steer the model by the best SAE latent, by the difference-of-means
direction at the same site, and by prompting (steering_methods.py), each at a grid of strengths, from a few
neutral prompts; judge every greedy continuation by a probe on a later layer (concept score) and by the
clean model's perplexity (fluency) (steering_judge.py).

Snippets of each concept are split in two: the first half chooses the SAE latent (largest difference of
mean pooled activation, concept minus rest) and the difference-of-means direction (mean pooled site
activation, concept minus rest); the second half fits and tests the judge, so the judge never saw the texts
the steering vectors came from. "Rest" is every other concept's snippets plus prose.

The summary is the concept score at matched fluency: per concept and method, the best mean concept score
among its strengths (the unsteered text, strength 0, included) whose perplexity is at most FLUENCY_FACTOR
times the unsteered generations' and whose generations are no more often degenerate (`broken`: features/steer.py
`degenerate`, repeats, empty, ..., but not "mostly symbols or digits") than max(the unsteered ones', half).
Concepts whose judge is at chance (held-out accuracy < JUDGE_MIN) are reported but left out of the means."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import UserError
from ...features.steer import degenerate
from ...sae.registry import multi_site
from .metric import BenchState, Metric, Table
from .steering_concepts import CONCEPTS, PROSE, check_concepts, draw_snippets
from .steering_judge import JUDGE_MIN, continuation_nll, fit_judge, judge_site, pooled
from .steering_methods import (
    NEUTRAL,
    NEW_TOKENS,
    STRENGTHS,
    clean,
    direction_rows,
    feature_steer,
    instructed_ids,
    neutral_ids,
    steered,
)

PER_CONCEPT = 80  # snippets per concept (x --task-scale): half choose the steering vectors, half fit the judge
SNIPPET_TOKENS = 24  # snippets are cut to about a continuation's length
FLUENCY_FACTOR = 2.0
DIFF_MEANS, PROMPTING = "difference of means", "prompting"


def check(b: BenchState) -> list[str]:
    """Everything that can be refused before any model work -> the concepts to run."""
    if b.lm is None:
        raise UserError("the steering metric needs the bench's model pass (state.lm); run it through `saelab bench`")
    concepts = check_concepts(getattr(b.cfg, "steer_concepts", None))
    for f in b.folders:
        if multi_site(f.sae.cfg) or "+" in f.sae.cfg.hookpoint:
            raise UserError(f"{f.path}: a multi-site dictionary (crosscoder, CLT) cannot be benched for steering")
    sites = {f.sae.cfg.out_hookpoint or f.sae.cfg.hookpoint for f in b.folders}
    if len(sites) > 1:
        raise UserError(f"steering compares dictionaries that write one site; these write {sorted(sites)}")
    return concepts


def _split(snips: dict[str, list[str]], tokenizer) -> tuple[list[list[int]], list[str], np.ndarray]:
    """Token rows of every snippet (BOS + SNIPPET_TOKENS), its concept, and whether it is in the fit half."""
    rows, owner, fit = [], [], []
    for name, texts in snips.items():
        for i, t in enumerate(texts):
            ids = tokenizer(t, add_special_tokens=False)["input_ids"][:SNIPPET_TOKENS]
            bos = tokenizer.bos_token_id
            rows.append(([bos] if bos is not None else []) + ids)
            owner.append(name)
            fit.append(i % 2 == 0)
    return rows, owner, np.array(fit)


def _vectors(b: BenchState, concepts, snips, skip: int):
    """The pooled pass over the snippets -> (site, judge site, site norm, {concept: unit diff-of-means
    direction}, {concept: {sae name: (latent, mean difference)}}, {concept: Judge})."""
    lm, dev = b.lm, b.cfg.device
    site = b.folders[0].sae.cfg.out_hookpoint or b.folders[0].sae.cfg.hookpoint
    jsite = judge_site(lm.model, site)
    rows, owner, fit = _split(snips, lm.tokenizer)
    enc = {
        n: (f.sae.cfg.hookpoint, lambda x, s=f.sae: s.encode_raw(x.float()).to_dense())
        for n, f in zip(b.names, b.folders)
    }
    x, norms = pooled(lm.model, rows, [site, jsite], skip, enc, dev)
    owner = np.array(owner)
    dirs, feats, judges = {}, {}, {}
    for i, c in enumerate(concepts):
        pos, rest = torch.from_numpy(owner == c), torch.from_numpy(owner != c)
        f, j = torch.from_numpy(fit), torch.from_numpy(~fit)
        d = x[site][pos & f].mean(0) - x[site][rest & f].mean(0)
        dirs[c] = d / d.norm().clamp_min(1e-8)
        feats[c] = {}
        for n in b.names:
            diff = x[n][pos & f].mean(0) - x[n][rest & f].mean(0)
            feats[c][n] = (int(diff.argmax()), float(diff.max()))
        judges[c] = fit_judge(x[jsite][pos & j], x[jsite][rest & j], b.cfg.seed + i)
    return site, jsite, norms[site], dirs, feats, judges


def _generate(b: BenchState, concepts, site, norm, dirs, feats, skip):
    """{method: {(concept, strength): [ids per prompt]}} (strength 0: the method's zero row) and the clean
    baseline [ids per prompt]."""
    model, tok = b.lm.model, b.lm.tokenizer
    eos = tok.eos_token_id
    prompts = neutral_ids(tok)
    base = clean(model, prompts, NEW_TOKENS, eos)
    pairs = [(None, 0.0)] + [(c, s) for c in concepts for s in STRENGTHS]
    gens: dict[str, dict] = {}

    def collect(method, per_prompt):
        gens[method] = {(c, s): [g[r] for g in per_prompt] for r, (c, s) in enumerate(pairs)}

    for n, f in zip(b.names, b.folders):
        sae = f.sae
        scale = float(sae.out_scale) if hasattr(sae, "out_scale") else 1.0
        lat = [feats[c][n][0] if c else None for c, _ in pairs]
        val = [s * norm * scale / float(sae.W_dec[feats[c][n][0]].detach().norm()) if c else 0.0 for c, s in pairs]
        dev = sae.W_dec.device
        collect(
            n,
            steered(
                model,
                sae,
                prompts,
                lambda lat=lat, val=val, dev=dev: feature_steer(lat, val, skip, dev),
                len(pairs),
                NEW_TOKENS,
                eos,
            ),
        )
    deltas = torch.stack([dirs[c] * s * norm if c else torch.zeros_like(next(iter(dirs.values()))) for c, s in pairs])
    dev = next(model.parameters()).device
    collect(
        DIFF_MEANS,
        steered(model, None, prompts, lambda: direction_rows(site, deltas.to(dev), skip), len(pairs), NEW_TOKENS, eos),
    )
    rows = [r for c in concepts for r in instructed_ids(tok, CONCEPTS[c][1])]
    flat = clean(model, rows, NEW_TOKENS, eos)
    k = len(prompts)
    gens[PROMPTING] = {(c, 1.0): flat[i * k : (i + 1) * k] for i, c in enumerate(concepts)}
    return base, gens


def broken(text: str) -> bool:
    """`degenerate` text (repeats, empty, whitespace, very short), except "mostly symbols or digits": that is what
    the numbers and markup concepts look like, so it says what the text is about, not how fluent it is."""
    why = degenerate(text, NEW_TOKENS)
    return why is not None and not why.startswith("mostly symbols")


def _point(strength, scores, nll, texts) -> dict:
    degen = [broken(t) for t in texts]
    return {
        "strength": strength,
        "concept_score": float(np.mean(scores)),
        "perplexity": float(math.exp(float(np.mean(nll)))),
        "degenerate": float(np.mean(degen)),
        "texts": texts,
    }


def matched(points: list[dict], base: dict) -> dict:
    """The best concept score among points as fluent as FLUENCY_FACTOR x the unsteered perplexity and no more
    often degenerate than max(the unsteered texts', 0.5) -> {concept_score, strength, perplexity} (None: none)."""
    ok = [
        p
        for p in points
        if p["perplexity"] <= FLUENCY_FACTOR * base["perplexity"] and p["degenerate"] <= max(base["degenerate"], 0.5)
    ]
    if not ok:
        return {"concept_score": None, "strength": None, "perplexity": None}
    best = max(ok, key=lambda p: p["concept_score"])
    return {k: best[k] for k in ("concept_score", "strength", "perplexity")}


def compute(b: BenchState) -> dict:
    concepts = check(b)
    skip = b.sink.first_positions
    per = max(12, int(round(PER_CONCEPT * b.cfg.task_scale)))
    snips = draw_snippets(concepts, per, b.cfg.seed)
    site, jsite, norm, dirs, feats, judges = _vectors(b, concepts, snips, skip)
    base, gens = _generate(b, concepts, site, norm, dirs, feats, skip)
    tok, model, dev = b.lm.tokenizer, b.lm.model, b.cfg.device
    prompts = neutral_ids(tok)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = tok.eos_token_id
    # every generation once through the judge layer and the fluency pass
    records = [("base", None, 0.0, i, g) for i, g in enumerate(base)]
    records += [(m, c, s, i, g) for m, d in gens.items() for (c, s), per_p in d.items() for i, g in enumerate(per_p)]
    strip = [[t for t in r[4] if t != eos] for r in records]
    x, _ = pooled(model, [bos + s for s in strip], [jsite], skip, None, dev)
    nll = np.zeros(len(records))
    for i, p in enumerate(prompts):
        idx = [k for k, r in enumerate(records) if r[3] == i]
        nll[idx] = continuation_nll(model, p, [records[k][4] or [eos] for k in idx], dev)
    score = {c: judges[c].score(x[jsite]).numpy() for c in concepts}
    texts = [tok.decode(s, skip_special_tokens=True) for s in strip]

    bsel = [k for k, r in enumerate(records) if r[0] == "base"]
    base_pt = _point(0.0, np.zeros(1), nll[bsel], [texts[k] for k in bsel])
    base_pt.pop("concept_score")
    out_concepts = []
    for c in concepts:
        entry = {
            "concept": c,
            "description": CONCEPTS[c][0],
            "instruction": CONCEPTS[c][1],
            "snippets": len(snips[c]),
            "judge": judges[c].to_dict(),
            "unsteered_score": float(np.mean(score[c][bsel])),
            "features": {n: {"latent": lat, "mean_difference": dm} for n, (lat, dm) in feats[c].items()},
            "methods": [],
        }
        for m, d in gens.items():
            keys = [(None, 0.0)] if m != PROMPTING else []
            keys += [(cc, s) for (cc, s) in d if cc == c]
            sel_of = {key: [k for k, r in enumerate(records) if r[0] == m and (r[1], r[2]) == key] for key in keys}
            # strength 0 of prompting is the unsteered text itself (no instruction)
            points = [_point(0.0, score[c][bsel], nll[bsel], [texts[k] for k in bsel])] if m == PROMPTING else []
            points += [_point(s, score[c][sel], nll[sel], [texts[k] for k in sel]) for (_, s), sel in sel_of.items()]
            entry["methods"].append({"method": m, "points": points, "matched": matched(points, base_pt)})
        out_concepts.append(entry)
    zero_ok = {
        m: [r[4] for r in records if r[0] == m and r[1] is None] == [r[4] for r in records if r[0] == "base"]
        for m in gens
        if m != PROMPTING
    }
    if not all(zero_ok.values()):
        b.notes.append(f"steering: a zero edit changed the greedy text of {[m for m, v in zero_ok.items() if not v]}")
    return {
        "site": site,
        "judge_site": jsite,
        "site_norm": norm,
        "strengths": [0.0, *STRENGTHS],
        "new_tokens": NEW_TOKENS,
        "prompts": list(NEUTRAL),
        "fluency_factor": FLUENCY_FACTOR,
        "judge_min_accuracy": JUDGE_MIN,
        "snippets_per_concept": per,
        "prose_snippets": len(snips[PROSE]),
        "baseline": base_pt,
        "zero_equals_baseline": zero_ok,
        "concepts": out_concepts,
        "summary": summary(out_concepts, list(gens)),
    }


def summary(concepts: list[dict], methods: list[str]) -> list[dict]:
    """Per method, the mean over concepts whose judge is above chance of the unsteered score, the score at
    matched fluency and their difference (None for a concept where no strength was fluent enough: counted as
    its unsteered score, since strength 0 always qualifies unless the baseline itself fails)."""
    valid = [c for c in concepts if not c["judge"]["at_chance"]]
    out = []
    for m in methods:
        got = [next(x for x in c["methods"] if x["method"] == m)["matched"]["concept_score"] for c in valid]
        un = [c["unsteered_score"] for c in valid]
        got = [g if g is not None else u for g, u in zip(got, un)]
        mean = float(np.mean(got)) if got else None
        base = float(np.mean(un)) if un else None
        gain = None if mean is None else mean - base
        out.append({"method": m, "concepts": len(valid), "unsteered": base, "matched_score": mean, "gain": gain})
    return out


def _cell(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _short(text: str, n: int = 70) -> str:
    """One line of a generated text for a table cell (no pipes or newlines)."""
    t = " ".join(text.replace("|", "/").split())
    return t if len(t) <= n else t[: n - 3] + "..."


def tables(js: dict) -> list[Table]:
    methods = [m["method"] for m in js["summary"]]
    head = ["concept", "judge accuracy", "unsteered"] + methods
    rows = []
    for c in js["concepts"]:
        by = {m["method"]: m["matched"] for m in c["methods"]}
        cells = [
            f"{_cell(by[m]['concept_score'])} (x{by[m]['strength']:g})" if by[m]["strength"] is not None else "n/a"
            for m in methods
        ]
        flag = " (at chance: left out)" if c["judge"]["at_chance"] else ""
        rows.append([c["concept"] + flag, c["judge"]["accuracy"], c["unsteered_score"], *cells])
    rows.append(["mean (judges above chance)", None, js["summary"][0]["unsteered"] if js["summary"] else None])
    rows[-1] += [s["matched_score"] for s in js["summary"]]
    base = js["baseline"]
    matched_title = (
        f"Steering: concept score at matched fluency (perplexity <= {js['fluency_factor']:g}x the unsteered "
        f"{base['perplexity']:.2f}; strength in site-norm units, {js['site']}, judged at {js['judge_site']})"
    )
    per = [
        [c["concept"], m["method"], p["strength"], p["concept_score"], p["perplexity"], p["degenerate"]]
        for c in js["concepts"]
        for m in c["methods"]
        for p in m["points"]
    ]
    gains = [[s["method"], s["concepts"], s["unsteered"], s["matched_score"], s["gain"]] for s in js["summary"]]
    examples = []
    for c in js["concepts"]:
        for m in c["methods"]:
            at = m["matched"]["strength"]
            p = next((q for q in m["points"] if q["strength"] == at), m["points"][-1])
            examples.append([c["concept"], m["method"], p["strength"], _short(p["texts"][0])])
    return [
        (matched_title, head, rows),
        (
            "Steering: mean over concepts (judges above chance)",
            ["method", "concepts", "unsteered", "matched score", "gain"],
            gains,
        ),
        (
            "Steering: concept score and fluency per strength (perplexity of the clean model; degenerate: share "
            "of texts flagged as repeats / symbols / empty)",
            ["concept", "method", "strength", "concept score", "perplexity", "degenerate"],
            per,
        ),
        (
            f"Steering: the first prompt's text at each method's matched strength (else its strongest; prompt "
            f"{js['prompts'][0]!r})",
            ["concept", "method", "strength", "text"],
            examples,
        ),
    ]


def panel(ax, js: dict, l0s: dict) -> None:
    """Mean concept score (judges above chance) against perplexity, one line per method over its strengths
    (labelled with the strength)."""
    valid = [c for c in js["concepts"] if not c["judge"]["at_chance"]] or js["concepts"]
    for i, s in enumerate(js["summary"]):
        pts = [next(m for m in c["methods"] if m["method"] == s["method"])["points"] for c in valid]
        xs = np.exp(np.mean([[math.log(p["perplexity"]) for p in ps] for ps in pts], 0))
        ys = np.mean([[p["concept_score"] for p in ps] for ps in pts], 0)
        ax.plot(xs, ys, "o-", color=f"C{i}", label=s["method"], ms=3)
        for x, y, p in zip(xs, ys, pts[0]):
            if p["strength"]:
                ax.annotate(f"{p['strength']:g}", (x, y), fontsize=5, color=f"C{i}")
    base = js["baseline"]["perplexity"]
    ax.axvline(js["fluency_factor"] * base, ls="--", lw=0.8, color="grey", label=f"{js['fluency_factor']:g}x unsteered")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=20))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("perplexity (clean model)")
    ax.set_ylabel("concept score")
    ax.set_title("steering: concept vs fluency")
    ax.legend(fontsize=6)


METRIC = Metric(
    "steering",
    "offline steering: best SAE latent vs difference of means vs prompting, concept score (probe on a later "
    "layer) at matched fluency (clean perplexity)",
    compute,
    tables,
    panel,
    needs_model=True,
)
