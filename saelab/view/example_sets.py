"""An interpretation run's example sets on a feature page: what the explainer saw and what the scorers tested.

`saelab explain` writes each explained latent's examples to RUN/examples.jsonl (interpret/examples.py
`LatentExamples.to_dict`: per set, [row, start, token ids, activations, peak, quantile]). A page shows the
first N_SHOWN of each set, so a reader can judge an explanation by the very examples it was made from and
scored on: the explain set, the activating scoring set, random windows and hard negatives (windows where
similar features fire and this one does not). Only N_SHOWN per set are kept in memory, read line by line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..interpret.examples import SETS
from ..interpret.records import EXAMPLES, EXPLANATIONS

N_SHOWN = 4
LABELS = {
    "explain": "shown to the explainer",
    "activating": "activating windows the scorers tested",
    "random": "random windows (the feature is silent)",
    "hard": "hard negatives (similar features fire, this one is silent)",
}


def run_folder(explanations) -> Path | None:
    """The interpretation run behind --explanations (a run folder or its explanations.jsonl), else None."""
    if explanations is None:
        return None
    p = Path(explanations)
    if p.is_dir():
        return p
    if p.name == EXPLANATIONS and (p.parent / "manifest.json").exists():
        return p.parent
    return None


def read_example_sets(explanations, d_sae: int) -> dict[int, dict[str, list]]:
    """latent -> {set: its first N_SHOWN examples as (token ids, activations, peak)} from the run's
    examples.jsonl (arrays, not lists of Python numbers: a run of many latents stays small in memory;
    {} without the file; a line cut by an interrupted run is skipped)."""
    run = run_folder(explanations)
    path = run / EXAMPLES if run is not None else None
    if path is None or not path.exists():
        return {}
    out: dict[int, dict[str, list]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            j = rec.get("latent") if isinstance(rec, dict) else None
            if isinstance(j, int) and 0 <= j < d_sae:
                out[j] = {
                    k: [
                        (np.asarray(ids, np.int32), np.asarray(acts, np.float32), int(peak))
                        for _row, _start, ids, acts, peak, _q in list(rec.get(k) or [])[:N_SHOWN]
                    ]
                    for k in SETS
                }
    return out


def shown_sets(sets: dict[str, list] | None, token_str, example_cls) -> list[dict]:
    """The page's example sets of one latent: [{kind, label, examples: [example_cls]}], sets with examples."""
    shown = []
    for k in SETS:
        exs = []
        for ids, acts, peak in (sets or {}).get(k, []):
            value = float(acts.max()) if len(acts) else 0.0
            exs.append(example_cls([token_str(int(t)) for t in ids], acts.tolist(), peak, value))
        if exs:
            shown.append({"kind": k, "label": LABELS[k], "examples": exs})
    return shown
