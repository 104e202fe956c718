"""e2e diagnosis: train variants at one budget, evaluate every SAE the same way (held-out KL).
Variant spec: name:loss:lr[:key=val,...]; key warm=F trains local for F of the tokens, then the
same SAE with `loss` for the rest (fresh Adam, own schedule)."""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import saelab.train.loop as loop
from saelab.data import load_token_rows
from saelab.evaluate.metrics import EvalBudget, evaluate
from saelab.models import load_model
from saelab.sae.folder import load_sae
from saelab.train.config import TrainConfig
from saelab.train.members import new_member

ap = argparse.ArgumentParser()
ap.add_argument("--model")
ap.add_argument("--corpus", default="builtin")
ap.add_argument("--site")
ap.add_argument("--latents", type=int)
ap.add_argument("--k", type=int)
ap.add_argument("--tokens", type=int)
ap.add_argument("--batch", type=int)
ap.add_argument("--context", type=int)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--eval-tokens", type=int, default=8192)
ap.add_argument("--eval-ce", type=int, default=4096)
ap.add_argument("--out")
ap.add_argument("variants", nargs="+")
a = ap.parse_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(a.threads)


def cfg(name, loss, lr, tokens, **kw):
    c = dict(
        out=str(out / name),
        model=a.model,
        corpus=a.corpus,
        hookpoints=[a.site],
        latents=a.latents,
        k=[a.k],
        tokens=tokens,
        batch_tokens=a.batch,
        context=a.context,
        lr=[lr],
        threads=a.threads,
        loss=loss,
        checkpoint_every=10**12,
        overwrite=True,
    )
    c.update(kw)
    return TrainConfig(**c)


def train_from(c, init_folder):
    """Train c starting from the SAE in init_folder (weights as saved; no data-dependent re-init)."""
    orig = loop.build_members

    def build(cfg, sites, widths):
        ms = orig(cfg, sites, widths)
        sae, _ = load_sae(init_folder)
        sae.init_from_data = lambda *a, **k: None
        return [new_member(ms[0].name, sae, ms[0].lr)]

    loop.build_members = build
    try:
        return loop.TrainingRun(c).run()
    finally:
        loop.build_members = orig


results = []
for spec in a.variants:
    name, loss, lr, *rest = spec.split(":")
    kw = dict(p.split("=") for p in rest[0].split(",")) if rest else {}
    warm = float(kw.pop("warm", 0))
    kw = {k: (json.loads(v) if v[0] in "0123456789-[tf" else v) for k, v in kw.items()}
    t = time.time()
    if warm:
        n1 = int(a.tokens * warm) // a.batch * a.batch
        (f1,) = loop.TrainingRun(cfg(name + "_warm", "local", float(lr), n1)).run()
        (f,) = train_from(cfg(name, loss, float(lr), a.tokens - n1, **kw), f1)
    else:
        (f,) = loop.TrainingRun(cfg(name, loss, float(lr), a.tokens, **kw)).run()
    wall = time.time() - t
    results.append((spec, f, wall))

lm = load_model(a.model)
rows = load_token_rows(a.corpus, lm.tokenizer, a.context)
saes = [load_sae(f) for _, f, _ in results]
ms = evaluate(lm.model, lm.tokenizer, saes, rows, EvalBudget(tokens=a.eval_tokens, ce_tokens=a.eval_ce))
for (spec, _f, wall), m in zip(results, ms):
    d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    row = {
        "variant": spec,
        "kl": d.get("kl"),
        "ce_increase": d.get("ce_increase"),
        "fvu": d.get("fvu"),
        "dead": d.get("dead"),
        "l0": d.get("l0"),
        "train_s": round(wall, 1),
    }
    print(json.dumps(row), flush=True)
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row | {"argv": sys.argv}) + "\n")
