"""How well a dictionary trained on a synthetic cache (evaluate/synthetic_data.py) recovers the truth.

`recovery_report(folder)` finds the cache through the folder's provenance (cfg.json
saelab.activation_cache, recorded by the training loop), reloads the true dictionary, and returns:

  features, latents, samples, threshold      what was compared
  mmcs_truth       mean over true features of the max cosine to any decoder row
  mmcs_decoder     mean over decoder rows of the max cosine to any true feature
  recovered        fraction of true features with a decoder row at cosine >= threshold (0.9)
  by_frequency     `recovered` per quarter of the true features sorted by firing probability (most
                   frequent first): [{p_max, p_min, recovered}]; rare features are learnt last, so
                   this says whether a short run is limited by its budget
  latent_precision mean over latents that fire of P(its matched feature is active | latent fires)
  latent_recall    mean over latents that fire of P(latent fires | its matched feature is active)
  feature_recall   mean over true features that fire of P(its best latent fires | feature active)
                   (matched = highest decoder cosine; silent latents have no precision to average)
  dead             fraction of latents that never fire on the fresh samples
  l0, true_l0, fvu on the fresh samples
  absorption       None without a hierarchy, else (Chanin et al. 2024, on the planted parent/child pairs):
                   rate: events (a child fires, so its parent is active) where the parent's latent
                   (best cosine to the parent) is silent while another active latent carries the
                   parent direction (decoder cosine >= absorb_cos), over all child events;
                   pair_mean: the same per pair, averaged; pairs_absorbed: pairs with rate >= 0.5;
                   parent_miss: parent latent silent on child events (carried or not);
                   parent_recall_alone: parent latent fires when the parent is active without a child.

Cosines are signed: a decoder row opposite to a feature does not represent it (activations are >= 0).
The fresh samples come from a generator stream no shard uses, so they are new vectors of the same law.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..option_checks import check_types, need_at_least
from ..options import opt
from ..sae.folder import SaeFolder, open_sae
from .synthetic_data import HOOK, SyntheticTruth, draw, load_truth

EVAL_STREAM = 2**31 - 1  # generator offset of the recovery samples: no shard of a cache uses it


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def truth_of(folder: SaeFolder, cache: str | Path | None = None) -> tuple[SyntheticTruth, Path]:
    """The truth a folder was trained on (through its recorded activation cache, or `cache`), checked
    against the dictionary's site and width."""
    if cache is None:
        cache = folder.cfg.get("saelab", {}).get("activation_cache")
        if not cache:
            raise UserError(
                f"{folder.path} was not trained on a synthetic activation cache (its cfg.json records no "
                f"activation_cache); train one with `saelab synthetic` + `saelab train --from-activations`"
            )
        if not Path(cache).exists() and (folder.path / cache).exists():  # a relative path recorded elsewhere
            cache = folder.path / cache
    truth = load_truth(Path(cache))
    c = folder.sae.cfg
    if c.is_transcoder or c.hookpoint != HOOK:
        raise UserError(
            f"{folder.path} reads {c.hookpoint!r}"
            + (f"->{c.out_hookpoint!r}" if c.is_transcoder else "")
            + f", not the synthetic site {HOOK!r} of {cache}"
        )
    if c.d_in != truth.directions.shape[1]:
        raise UserError(
            f"{folder.path} has d_in {c.d_in}; the synthetic truth in {cache} has {truth.directions.shape[1]} dims"
        )
    return truth, Path(cache)


def _by_frequency(prob: torch.Tensor, hit: torch.Tensor, parts: int = 4) -> list[dict]:
    order = prob.argsort(descending=True)
    return [
        {"p_max": float(prob[q[0]]), "p_min": float(prob[q[-1]]), "recovered": float(hit[q].float().mean())}
        for q in order.tensor_split(parts)
        if len(q)
    ]


@dataclass
class RecoveryConfig:
    """`saelab synthetic-recovery`: SAE folders trained on a `saelab synthetic` cache, and the comparison."""

    sae_dirs: list[str] = opt(
        help="SAE folders trained with --from-activations on a `saelab synthetic` cache", positional=True
    )
    cache: str | None = opt(None, "the synthetic cache", shown="the one recorded in each folder's cfg.json")
    samples: int = opt(16384, "fresh synthetic vectors for precision/recall/absorption")
    threshold: float = opt(0.9, "decoder cosine at which a true feature counts as recovered")

    def validate(self) -> None:
        check_types(self)  # recovery_report checks its ranges too (a library call); here before any folder opens
        need_at_least(self, 1, "samples")
        if not -1 <= self.threshold <= 1:
            raise UserError(f"option --threshold is a cosine in [-1, 1], got {self.threshold}")


def recovery_reports(cfg: RecoveryConfig) -> list[dict]:
    """recovery_report of each folder, in order."""
    cfg.validate()
    return [
        recovery_report(open_sae(d), cache=cfg.cache, samples=cfg.samples, threshold=cfg.threshold)
        for d in cfg.sae_dirs
    ]


@torch.no_grad()
def recovery_report(
    folder: SaeFolder,
    cache: str | Path | None = None,
    samples: int = 16384,
    threshold: float = 0.9,
    absorb_cos: float = 0.3,
    batch: int = 4096,
    seed: int = 0,
) -> dict:
    if samples < 1 or batch < 1 or not -1 <= threshold <= 1 or not -1 <= absorb_cos <= 1:
        raise UserError("recovery needs samples >= 1, batch >= 1 and cosine thresholds in [-1, 1]")
    truth, cache = truth_of(folder, cache)
    sae = folder.sae.eval()
    D, W = truth.directions, _unit_rows(sae.W_dec.detach().float().cpu())
    cos = D @ W.T  # [N, M]
    best_lat_cos, best_lat = cos.max(1)  # per true feature
    best_feat_cos, best_feat = cos.max(0)  # per latent
    n, m = cos.shape
    kids = truth.children
    parents = truth.parent[kids]
    par_lat = best_lat[parents]  # each pair's parent latent
    # carriers[j, q]: latent j (not pair q's parent latent) points along pair q's parent direction
    carriers = cos[parents].T >= absorb_cos
    carriers[par_lat, torch.arange(len(kids))] = False

    lat_fires, feat_fires = torch.zeros(m), torch.zeros(n)
    tp_lat, tp_feat = torch.zeros(m), torch.zeros(n)  # (latent, its feature) / (feature, its latent) co-firing
    child_events, absorbed, missed = (torch.zeros(len(kids)) for _ in range(3))
    alone, alone_hit = torch.zeros(len(kids)), torch.zeros(len(kids))
    l0 = true_l0 = err = var = 0.0
    g = torch.Generator().manual_seed(truth.cfg.seed * 1_000_003 + EVAL_STREAM + seed)
    for a in range(0, samples, batch):
        smp = draw(truth, min(batch, samples - a), g)
        x = smp.x.to(next(sae.parameters()).device)
        fired = (sae.encode_raw(x).to_dense() > 0).cpu()
        act = smp.active
        lat_fires += fired.sum(0)
        feat_fires += act.sum(0)
        tp_lat += (fired & act[:, best_feat]).sum(0)
        tp_feat += (act & fired[:, best_lat]).sum(0)
        l0 += float(fired.sum())
        true_l0 += float(act.sum())
        r = sae.reconstruct(x).cpu() - smp.x
        err += float(r.pow(2).sum())
        var += float((smp.x - smp.x.mean(0)).pow(2).sum())
        if len(kids):
            child_on = act[:, kids]  # [rows, pairs]
            par_silent = ~fired[:, par_lat]
            carried = (fired.float() @ carriers.float()) > 0
            child_events += child_on.sum(0)
            missed += (child_on & par_silent).sum(0)
            absorbed += (child_on & par_silent & carried).sum(0)
            # the parent active with none of its children: the parent latent should fire
            has_child = torch.zeros(act.shape[0], n).index_add_(1, parents, child_on.float()) > 0
            lone = act[:, parents] & ~has_child[:, parents]
            alone += lone.sum(0)
            alone_hit += (lone & ~par_silent).sum(0)
    on = lat_fires > 0
    feat_on = feat_fires > 0
    report = {
        "cache": str(cache),
        "features": n,
        "latents": m,
        "samples": samples,
        "threshold": threshold,
        "mmcs_truth": float(best_lat_cos.mean()),
        "mmcs_decoder": float(best_feat_cos.mean()),
        "recovered": float((best_lat_cos >= threshold).float().mean()),
        "by_frequency": _by_frequency(truth.prob, best_lat_cos >= threshold),
        "latent_precision": float((tp_lat[on] / lat_fires[on]).mean()) if on.any() else 0.0,
        "latent_recall": float((tp_lat[on] / feat_fires[best_feat[on]].clamp_min(1)).mean()) if on.any() else 0.0,
        "feature_recall": float((tp_feat[feat_on] / feat_fires[feat_on]).mean()) if feat_on.any() else 0.0,
        "dead": float((~on).float().mean()),
        "l0": l0 / samples,
        "true_l0": true_l0 / samples,
        "fvu": err / max(var, 1e-12),
        "absorption": None,
    }
    if len(kids):
        ev = child_events.clamp_min(1)
        rate = absorbed / ev
        seen = child_events > 0
        report["absorption"] = {
            "pairs": len(kids),
            "absorb_cos": absorb_cos,
            "child_events": int(child_events.sum()),
            "rate": float(absorbed.sum() / child_events.sum().clamp_min(1)),
            "pair_mean": float(rate[seen].mean()) if seen.any() else 0.0,
            "pairs_absorbed": int((rate[seen] >= 0.5).sum()),
            "parent_miss": float(missed.sum() / child_events.sum().clamp_min(1)),
            "parent_recall_alone": float(alone_hit.sum() / alone.sum().clamp_min(1)),
        }
    return report
