"""The training loop's overhead: `TrainingRun._step` (objective, parts, stats, dead counters) against a
bare per-SAE step written out by hand (forward, FVU loss, backward, Adam, renormalise: what the
trainer before the one-loop redesign did), alternating in one process on the same synthetic batches.
4 TopK SAEs (4608 latents, k = 32, d = 576, 4096 rows per batch), no LM.

    python bench/loop_overhead.py     # prints median seconds per step of each and their ratio
"""

import time

import torch

from saelab.train.config import TrainConfig
from saelab.train.loop import TrainingRun
from saelab.train.members import build_members
from saelab.train.objectives import LocalObjective
from saelab.train.parallel import SingleProcess
from saelab.train.sources import Batch

torch.set_num_threads(2)
torch.manual_seed(0)
d, n = 576, 4096
xs = [torch.randn(n, d) * 3 for _ in range(8)]
cfg = TrainConfig(out="/tmp/saelab_loop_overhead", latents=4608, k=[32], lr=[2e-3, 3e-3, 4e-3, 5e-3])


def fresh():
    ms = build_members(cfg, [("h", None)], {"h": d})
    for m in ms:
        m.sae.init_from_data(xs[0], xs[0])
    return ms


def bare_step(m, x, y, dead_tokens=10**9):
    sae = m.sae
    target = y * sae.out_scale
    dead = m.since_fired >= dead_tokens
    out = sae(x, dead=dead, target=target)
    err = (out.recon - target).pow(2).sum()
    fvu = err / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    loss = fvu + out.sparsity_loss + out.aux_loss
    if not torch.isfinite(loss) or loss.item() > 1e4:
        raise RuntimeError
    m.opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_decoder_grad()
    m.opt.step()
    sae.normalize_decoder()
    fired = out.latents.fire_counts() > 0
    m.since_fired += x.shape[0]
    m.since_fired[fired] = 0
    l0 = out.latents.values.gt(0).sum().item() / x.shape[0]
    s = {"fvu": fvu.item(), "l0": l0, "dead": dead.float().mean().item(), "aux": out.aux_loss.item()}
    for key, v in s.items():
        m.stats[key] = v if key not in m.stats else 0.9 * m.stats[key] + 0.1 * v


run = TrainingRun.__new__(TrainingRun)
run.cfg, run.parallel, run.out = cfg, SingleProcess(), "/tmp/saelab_loop_overhead"
obj = LocalObjective()
res = {"bare": [], "loop": []}
for _rep in range(6):
    for kind in ("bare", "loop"):
        ms = fresh()
        t = time.perf_counter()
        for x in xs:
            if kind == "bare":
                for m in ms:
                    bare_step(m, x, x)
            else:
                run._step(ms, obj, Batch(acts={"h": x}, positions=n, progress=0.5), False, 10**9, {})
        res[kind].append((time.perf_counter() - t) / len(xs))
for k, v in res.items():
    v = sorted(v)
    print(k, "median s/step (4 SAEs):", round(v[len(v) // 2], 4), "all:", [round(a, 4) for a in v])
print("loop/bare:", round(sorted(res["loop"])[3] / sorted(res["bare"])[3], 3))
