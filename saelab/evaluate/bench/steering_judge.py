"""The steering benchmark's judges, which need no strong LLM, and the pooled model pass they read.

Concept score: a logistic probe (logreg.fit_logreg) on the clean model's activations at a DIFFERENT layer
than the steered site (`judge_site`: about halfway from the site to the last block, so the judge is not
reading back the very vector the steering wrote), mean-pooled over a text's positions after the sink.
It is fit per concept on held-out snippets of the concept vs as many snippets of the rest (other concepts
and prose), 70/30, and its own held-out accuracy is reported: a judge near chance cannot tell the concept
from the rest, so the scores it gives mean nothing (`JUDGE_MIN`, flagged `at_chance`). A generated text's
score is the probe's probability of the concept.

Fluency: the clean (unsteered) model's mean negative log-likelihood per token of the generated
continuation, given the neutral prompt (the same context for every method, prompting included: an
instruction does not buy its text a better fluency), reported as perplexity exp(NLL)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...families import family_of
from ...models import collect_activations, decoder_layers, layer_index
from .logreg import Probe, accuracy, fit_logreg

JUDGE_MIN = 0.7  # held-out accuracy below this: the judge is (near) chance, its concept's scores are not used
L2 = 1e-2  # the judge's penalty: soft probabilities on a few dozen snippets of 576+ features
BATCH = 16


def judge_site(model, site: str) -> str:
    """The block output the judge reads: about halfway between the steered site's block and the last one
    (the block before, when the site is in the last block)."""
    n = len(decoder_layers(model)[1])
    layer = layer_index(model, site)
    j = layer + max(1, (n - 1 - layer) // 2)
    return family_of(model).block(j if j <= n - 1 else max(0, layer - 1))


def pad(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [n, T] and lengths [n] (a causal model's real positions never see the padding)."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows])


@torch.no_grad()
def pooled(
    model, rows: list[list[int]], sites: list[str], skip: int, encoders: dict | None = None, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Mean over each row's positions from `skip` on (a row no longer than `skip`: its last position) of the
    activations at `sites` and of each encoder's codes (`encoders`: name -> (site, fn [n, d] -> [n, d_lat]))
    -> ({site or encoder name: [rows, d]}, {site: mean L2 norm of its activation over those positions})."""
    encoders = encoders or {}
    need = sorted(set(sites) | {s for s, _ in encoders.values()})
    out: dict[str, list] = {k: [] for k in [*sites, *encoders]}
    norm_sum = dict.fromkeys(sites, 0.0)
    count = 0
    for a in range(0, len(rows), BATCH):
        ids, lens = pad(rows[a : a + BATCH], 0)
        acts = collect_activations(model, ids.to(device), need)
        pos = torch.arange(ids.shape[1])[None]
        w = ((pos >= skip) & (pos < lens[:, None])).float()
        empty = w.sum(1) == 0
        w[empty, (lens - 1).clamp_min(0)[empty]] = 1.0
        count += int(w.sum())
        w = (w / w.sum(1, keepdim=True)).to(device)
        for s in sites:
            x = acts[s].float()
            out[s].append(torch.einsum("bt,btd->bd", w, x).cpu())
            norm_sum[s] += float((x.norm(dim=-1) * (w > 0)).sum())
        for name, (s, fn) in encoders.items():
            x = acts[s].float()
            z = fn(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
            out[name].append(torch.einsum("bt,btd->bd", w, z.float()).cpu())
    return {k: torch.cat(v) for k, v in out.items()}, {s: v / max(count, 1) for s, v in norm_sum.items()}


@dataclass
class Judge:
    probe: Probe
    accuracy: float  # held-out accuracy of the probe (balanced classes: chance is 0.5)
    n_train: int
    n_test: int

    @property
    def at_chance(self) -> bool:
        return self.accuracy < JUDGE_MIN

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """P(concept) of pooled activations [n, d] -> [n]."""
        return torch.sigmoid(self.probe.logits(x.float())[:, 0])

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "n_train": self.n_train, "n_test": self.n_test, "at_chance": self.at_chance}


def fit_judge(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> Judge:
    """A balanced binary probe: every positive and as many negatives (drawn with `seed`), each class split
    70/30 into train and test."""
    rng = np.random.default_rng(seed)
    n = min(len(pos), len(neg))
    p, q = pos[rng.permutation(len(pos))[:n]], neg[rng.permutation(len(neg))[:n]]
    cut = max(1, int(round(0.7 * n)))
    x_tr, x_te = torch.cat([p[:cut], q[:cut]]), torch.cat([p[cut:], q[cut:]])
    y_tr = torch.cat([torch.ones(cut), torch.zeros(cut)]).long()
    y_te = torch.cat([torch.ones(n - cut), torch.zeros(n - cut)]).long()
    probe = fit_logreg(x_tr, y_tr, 2, l2=L2)
    acc = accuracy(probe, x_te, y_te) if len(y_te) else float("nan")
    return Judge(probe, acc, len(y_tr), len(y_te))


@torch.no_grad()
def continuation_nll(model, prompt: list[int], conts: list[list[int]], device: str = "cpu") -> np.ndarray:
    """The clean model's mean NLL per token of each continuation (at least one token) after `prompt` [n]."""
    out = []
    p = len(prompt)
    for a in range(0, len(conts), BATCH):
        chunk = conts[a : a + BATCH]
        ids, lens = pad([prompt + c for c in chunk], 0)
        logp = model(input_ids=ids.to(device), use_cache=False).logits[:, p - 1 : -1].float().log_softmax(-1).cpu()
        tgt = ids[:, p:]
        nll = -logp.gather(-1, tgt[..., None])[..., 0]  # [b, T - p]
        mask = torch.arange(tgt.shape[1])[None] < (lens - p)[:, None]
        out.append(((nll * mask).sum(1) / mask.sum(1).clamp_min(1)).numpy())
    return np.concatenate(out)
