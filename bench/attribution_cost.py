"""Cost of an attribution graph: saelab's `attribute` against circuit-tracer's, same transcoders, same prompts.

    SAELAB_CACHE=.cache python bench/attribution_cost.py [REPLACEMENT] --out DIR [--sizes 16 32 64] [--repeats 1]
        [--max-feature-nodes 7500] [--batch-size 256] [--impls saelab circuit-tracer] [--ct-python PATH]

REPLACEMENT (default: $SAELAB_CACHE/bench28/plt_k16, the trained k-16 per-layer transcoder set of the embedded
model) is exported once to circuit-tracer's layout (DIR/ct, `saelab export --format circuit-tracer`); each
prompt is BOS + the first n-1 tokens of the built-in corpus's first prose text (the 16-token prompt is a prefix
of the 32-token one, and so on). Every run is its own process, so peak RSS (ru_maxrss) is per run: saelab's in
this interpreter (`--worker`), circuit-tracer's through bench/circuit_tracer_graph.py --attribute-only in its own
venv. Both get the same token ids, --max-n-logits, --desired-logit-prob, --batch-size, --max-feature-nodes
(default 7500, circuit-tracer's CLI default: its dense [nodes x nodes] adjacency of every active feature of a
64-token prompt would be ~4 GB, held about three times) and one zeroed position; both on 2 threads.

Writes DIR/attribution_cost.json (every run) and DIR/attribution_cost.md (one table row per prompt size).
Run it alone on the machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CT_PYTHON = "/work/main/.cache/venvs/circuit-tracer/bin/python"
HERE = Path(__file__).resolve().parent
BOS = 1  # SmolLM2's <|im_start|>, what circuit-tracer prepends to a prompt


def prompt_tokens(tokenizer, n: int) -> list[int]:
    """BOS + the first n-1 tokens of the built-in corpus's first text long enough (English prose first)."""
    from saelab.data import builtin_texts

    for text in builtin_texts():
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) >= n:
            return [BOS] + list(ids[: n - 1])
    raise SystemExit(f"no built-in text has {n} tokens")


def model_folder(spec: str) -> Path:
    """The local Hugging Face folder circuit-tracer loads for the replacement's model spec."""
    from saelab.models import EMBEDDED, _embedded_folder

    if spec == EMBEDDED:
        return _embedded_folder()
    if (Path(spec) / "config.json").is_file():
        return Path(spec)
    raise SystemExit(f"the replacement's model {spec!r} is not a local folder circuit-tracer can load offline")


# ---------------------------------------------------------------- one saelab run (its own process)


def worker(a) -> None:
    """Load the model and the replacement, then time saelab's attribute alone; print one JSON line."""
    import torch

    torch.set_num_threads(a.threads)
    from saelab.circuits.attribution import attribute
    from saelab.models import load_model
    from saelab.sae.replacement import open_replacement

    t0 = time.perf_counter()
    rep = open_replacement(Path(a.replacement))
    model = load_model(rep.model_spec).model
    load_s = time.perf_counter() - t0
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reset = _reset_hwm()
    tokens = torch.tensor([int(t) for t in a.tokens.split(",")])
    t1 = time.perf_counter()
    g = attribute(model, rep, tokens, max_n_logits=a.max_n_logits, desired_logit_prob=a.desired_logit_prob,
                  max_feature_nodes=a.max_feature_nodes or None, batch_size=a.batch_size, progress=False)  # fmt: skip
    attribute_s = time.perf_counter() - t1
    print(json.dumps({
        "n_active": len(g.active_features), "n_selected": len(g.selected_features), "n_targets": g.n_targets,
        "time_s": {"load": load_s, "attribute": attribute_s},
        "memory_mib": {"peak_rss_after_load": rss_load, "attribute_peak_rss": _hwm_mib() if reset else None,
                       "peak_rss": _peak_mib()},
        "exactness": g.meta.get("exactness"),
    }))  # fmt: skip


def _peak_mib() -> float:
    """The process's peak RSS: ru_maxrss, or VmHWM where the kernel has not folded the latest peak into it yet."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _hwm_mib())


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- the driver


def run_one(impl: str, a, tokens: list[int], ct: Path, model_dir: Path, out: Path) -> dict:
    common = ["--max-n-logits", str(a.max_n_logits), "--desired-logit-prob", str(a.desired_logit_prob),
              "--batch-size", str(a.batch_size), "--threads", str(a.threads), "--tokens", ",".join(map(str, tokens))]  # fmt: skip
    if a.max_feature_nodes:
        common += ["--max-feature-nodes", str(a.max_feature_nodes)]
    if impl == "saelab":
        cmd = [sys.executable, __file__, str(a.replacement), "--worker", *common]
        env = dict(os.environ)
    else:
        cmd = [a.ct_python, str(HERE / "circuit_tracer_graph.py"), str(ct), "--model", str(model_dir),
               "--out", str(out), "--attribute-only", *common]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    wall = time.perf_counter() - t
    row = {"impl": impl, "n_tokens": len(tokens), "process_wall_s": wall, "ok": r.returncode == 0}
    if r.returncode != 0:
        return row | {"error": r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else f"exit {r.returncode}"}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if impl == "circuit-tracer":
        res = json.loads((out / "result.json").read_text())
        res["n_targets"] = len(res["logit_targets"])
    keep = ("n_active", "n_selected", "n_targets", "time_s", "memory_mib", "exactness")
    return row | {k: res[k] for k in keep if k in res}


def table(runs: list[dict]) -> str:
    def cell(r, key):
        if r is None or not r["ok"]:
            return "failed" if r else "-"
        t, m = r["time_s"], r["memory_mib"]
        peak = m.get("attribute_peak_rss") or m.get("peak_rss")
        return {"time": f"{t['attribute']:.1f}", "rss": f"{m['peak_rss'] / 1024:.2f} / {peak / 1024:.2f}",
                "feat": f"{r['n_active']} / {r['n_selected']}"}[key]  # fmt: skip

    lines = ["| tokens | impl | attribute (s) | peak RSS process / attribute (GiB) | active / selected features |",
             "|---:|---|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        lines.append(f"| {r['n_tokens']} | {r['impl']} | {cell(r, 'time')} | {cell(r, 'rss')} | {cell(r, 'feat')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    cache = Path(os.environ.get("SAELAB_CACHE", ".cache"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("replacement", nargs="?", default=str(cache / "bench28" / "plt_k16"))
    p.add_argument("--out", default=str(cache / "bench32" / "attribution_cost"))
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--impls", nargs="+", choices=("saelab", "circuit-tracer"), default=["saelab", "circuit-tracer"])
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=7500, help="0: every active feature")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ct-python", default=os.environ.get("SAELAB_CT_PYTHON", CT_PYTHON))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    if "circuit-tracer" in a.impls and not Path(a.ct_python).exists():
        raise SystemExit(f"circuit-tracer's python {a.ct_python} does not exist (--ct-python, or --impls saelab)")
    from transformers import AutoTokenizer

    from saelab.sae.circuit_tracer_io import export_circuit_tracer
    from saelab.sae.replacement import read_manifest

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ct = out / "ct"
    if not (ct / "config.yaml").exists():
        export_circuit_tracer(Path(a.replacement), ct, overwrite=True)
    spec = read_manifest(Path(a.replacement))["model"]["spec"]
    model_dir = model_folder(spec)
    tok = AutoTokenizer.from_pretrained(model_dir)
    runs = []
    for n in a.sizes:
        tokens = prompt_tokens(tok, n)
        for rep in range(a.repeats):
            for impl in a.impls:
                r = run_one(impl, a, tokens, ct, model_dir, out / f"ct_{n}_{rep}") | {"repeat": rep}
                runs.append(r)
                print(json.dumps(r), flush=True)
    meta = {k: v for k, v in vars(a).items() if k not in ("worker", "tokens")}
    (out / "attribution_cost.json").write_text(json.dumps({"options": meta, "runs": runs}, indent=1))
    (out / "attribution_cost.md").write_text(table(runs))
    print(table(runs))


if __name__ == "__main__":
    main()
