"""`saelab bench`: an offline evaluation suite for dictionaries at one site (issue 12).

One job per file: dictionaries.py (SAE folders and baselines behind one `Dictionary` interface),
tasks.py + task_files.py (labelled probing tasks from the embedded corpus or a JSONL file),
encode.py (one model pass per task, every dictionary encoding it), logreg.py (the small torch
logistic regression). Each metric is one module that declares `METRIC = Metric(...)` (metric.py:
how it is computed from the shared `BenchState`, its report tables, its bench.png panel, whether it
is on by default and needs the model): core.py, probing.py, absorption.py, autointerp.py,
synthetic.py; registry.py lists them, and run.py (the orchestration), config.py (--metrics),
report.py (report.md / report.html) and plots.py (bench.png) read only that list. results.py: the
typed schema of bench.json. Adding a metric: its module and one line in registry.py.
"""
