"""`saelab bench`: an offline evaluation suite for dictionaries at one site (issue 12).

One job per file: dictionaries.py (SAE folders and baselines behind one `Dictionary` interface),
tasks.py + task_files.py (labelled probing tasks from the embedded corpus or a JSONL file),
encode.py (one model pass per task, every dictionary encoding it), logreg.py (the small torch
logistic regression), probing.py, absorption.py, autointerp.py (metrics), results.py (the typed JSON
schemas), report.py + plots.py (report.md / report.html / bench.png), run.py (the orchestration).
"""
