"""`saelab bench`: the offline evaluation suite (core, sparse probing, absorption, autointerp,
synthetic) on SAE folders at one site, with baselines run through the same code."""

from __future__ import annotations

from ..options import THREADS_HELP


def cmd_bench(a) -> None:
    from ..evaluate.bench.run import run_bench
    from ..interpret.bench_summary import autointerp_summary

    # read (and checked) before any model loads
    summary = autointerp_summary(a.interp) if a.interp else None
    run_bench(a.sae_dirs, a.out, metrics=a.metrics, baselines=a.baselines or [], interp_summary=summary,
              tasks_file=a.tasks, device=a.device, overwrite=a.overwrite, core_tokens=a.tokens,
              ce_tokens=a.ce_tokens, task_scale=a.task_scale, seed=a.seed)


def register(sub) -> None:
    b = sub.add_parser("bench", help="offline evaluation suite: core, sparse probing, absorption, autointerp, "
                                     "synthetic; baselines through the same code (docs/EVAL.md)")
    b.add_argument("sae_dirs", nargs="+", help="SAE folders at one site of one model")
    b.add_argument("--out", required=True, help="report folder (JSON per metric, report.md/html, bench.png)")
    b.add_argument("--metrics", nargs="+", help="core probing absorption autointerp synthetic "
                   "(default: core probing absorption, plus autointerp with --interp)")
    b.add_argument("--baselines", nargs="+", help="neurons residual pca random: bases run as dictionaries")
    b.add_argument("--interp", help="an interpretation run (saelab explain/score output) to summarise")
    b.add_argument("--tasks", help="extra probing task: JSONL of {\"text\", \"label\"} records")
    b.add_argument("--tokens", type=int, default=20_000, help="held-out tokens for the core reconstruction metrics")
    b.add_argument("--ce-tokens", type=int, default=1024, help="held-out tokens for core KL / CE (full forwards)")
    b.add_argument("--task-scale", type=float, default=1.0, help="multiplies the examples of the built-in tasks")
    b.add_argument("--seed", type=int, default=0, help="seed of task sampling and splits")
    b.add_argument("--threads", type=int, help=THREADS_HELP)
    b.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    b.set_defaults(fn=cmd_bench)
