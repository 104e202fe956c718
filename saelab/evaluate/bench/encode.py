"""One model pass over a task's rows, every dictionary encoding the same activations.

Sequence-level examples are the mean of a dictionary's codes over the row's non-sink positions
(the positions the SAEs were trained on: `sinks.excluded_positions` with the SAEs' rule, read at
the SAE site); token-level examples read one position, and an example that falls on a sink
position is dropped for every dictionary alike (`Encoded.keep`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...models import collect_activations
from ...sinks import SinkConfig, excluded_positions, special_ids
from .dictionaries import Dictionary
from .tasks import Task


@dataclass
class Encoded:
    codes: dict[str, torch.Tensor]  # dictionary name -> [kept examples, d_lat]
    site: dict[str, torch.Tensor]  # hookpoint -> raw activations [kept examples, d_site] (the probe ceiling)
    keep: np.ndarray  # bool [examples]: not on a sink position


@torch.no_grad()
def encode_task(
    model,
    tokenizer,
    task: Task,
    dicts: list[Dictionary],
    main_site: str,
    sink: SinkConfig,
    batch_rows: int = 16,
    device: str = "cpu",
    desc: str | None = None,
) -> Encoded:
    sites = sorted({main_site} | {d.site for d in dicts})
    special = special_ids(tokenizer)
    n_rows = len(task.ids)
    codes: dict[str, list] = {d.name: [] for d in dicts}
    raw: dict[str, list] = {s: [] for s in sites}
    keep = np.ones(len(task.labels), bool)
    by_row = np.argsort(task.rows, kind="stable")  # examples grouped by row, in row order
    ex_rows = task.rows[by_row]
    order: list[np.ndarray] = []
    for start in tqdm(range(0, n_rows, batch_rows), desc=desc or f"bench: {task.name}", leave=False):
        stop = min(start + batch_rows, n_rows)
        ids = torch.from_numpy(task.ids[start:stop]).to(device)
        acts = collect_activations(model, ids, sites)
        drop = excluded_positions([acts[main_site]], ids, sink, special)
        drop |= (
            torch.arange(ids.shape[1], device=device)[None]
            >= torch.from_numpy(task.lengths[start:stop]).to(device)[:, None]
        )
        if task.level == "sequence":
            w = (~drop).float()
            w = w / w.sum(1, keepdim=True).clamp_min(1)  # mean over kept positions

            def pool(v, w=w):  # [b, T, d] -> [b, d]
                return torch.einsum("bt,btd->bd", w, v.float())

            for d in dicts:
                a = acts[d.site]
                codes[d.name].append(pool(d.encode(a.reshape(-1, a.shape[-1])).reshape(*a.shape[:2], -1)))
            for s in sites:
                raw[s].append(pool(acts[s]))
        else:
            lo, hi = np.searchsorted(ex_rows, [start, stop])
            ex = by_row[lo:hi]
            r = torch.from_numpy(task.rows[ex] - start)
            p = torch.from_numpy(task.positions[ex])
            ok = ~drop[r, p].cpu()
            keep[ex] = ok.numpy()
            r, p = r[ok], p[ok]
            order.append(ex[ok.numpy()])
            for d in dicts:
                codes[d.name].append(d.encode(acts[d.site][r, p]))
            for s in sites:
                raw[s].append(acts[s][r, p].float())
    if task.level == "token":  # back to example order
        perm = np.argsort(np.concatenate(order), kind="stable") if order else np.zeros(0, int)
        fix = lambda parts: torch.cat(parts)[torch.from_numpy(perm)]  # noqa: E731
    else:
        fix = torch.cat
    return Encoded({k: fix(v).cpu() for k, v in codes.items()}, {k: fix(v).cpu() for k, v in raw.items()}, keep)
