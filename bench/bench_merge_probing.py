"""SAE-vs-neurons table from two bench folders (same tasks, seed and rows): rows of both probing.json."""

import json
import sys

rows = []
for folder in sys.argv[1:]:
    p = json.load(open(f"{folder}/probing.json"))
    for d in p["dictionaries"]:
        if d["dictionary"] not in [r["dictionary"] for r in rows]:
            rows.append(d)
tasks = [t["task"] for t in rows[0]["tasks"]]
print("| dictionary | k=1 | k=2 | k=5 | k=20 | full site | " + " | ".join(f"{t} k=1" for t in tasks) + " |")
print("|---" * (6 + len(tasks)) + "|")
for d in rows:
    m = d["mean_accuracy"]
    print(
        f"| {d['dictionary']} | {m['1']:.3f} | {m['2']:.3f} | {m['5']:.3f} | {m['20']:.3f} | {d['mean_ceiling']:.3f} | "
        + " | ".join(f"{t['accuracy']['1']:.3f}" for t in d["tasks"])
        + " |"
    )
