"""Print the numbers docs/INTERPRET.md reports from the runs of bench/interp_headline.sh:
per-run scorer means, per-latent seconds for explaining and for each scorer, failures.

    python bench/interp_summary.py RUN [RUN ...]"""

import json
import sys

from saelab.interpret.records import load_run
from saelab.interpret.report import summarise

for path in sys.argv[1:]:
    s = summarise(load_run(path))
    out = {"run": s["label"], "dictionary": s["dictionary"], "explainer": s["explainer"].get("explainer"),
           "latents": s["latents"], "explained": s["explained"], "failed": s["explain_failed"],
           "skipped": s["skipped_too_few_examples"], "explain_s_per_latent": round(s["explain_seconds_per_latent"], 2)}
    for sc, d in s["scorers"].items():
        out[sc] = {"mode": d["modes"], "scored": d["scored"], "failed": d["failed"], "failed_examples": d["failed_examples"],
                   "s_per_latent": round(d["seconds_per_latent"], 2),
                   **{m: f"{st['mean']:.3f} ± {st['sem']:.3f} (n={st['n']})" for m, st in d["metrics"].items()
                      if m in ("auc", "balanced_accuracy", "score", "auc_hard", "f1")}}
    print(json.dumps(out, indent=1))
