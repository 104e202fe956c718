"""Synthetic ground truth (`saelab synthetic`): activations made from a known dictionary, written as an
ordinary ACTIVATION CACHE (activations/disk_cache.py) so that `saelab train --from-activations DIR
--model synthetic --hookpoints synthetic` trains any architecture on them through the normal loop.

The truth: N unit-norm directions in d dimensions (Gaussian, normalised). Feature i fires with a
Zipf-like marginal probability p_i = min(1, c * rank_i^-zipf), c chosen so the expected number of
active features per vector is `k_true`. Optional structure:
  correlation   root features are split into `correlation_groups` groups; a Gaussian copula gives
                two features of one group latent correlation `correlation` (marginals unchanged);
  hierarchy     "PxC": P parents (drawn from the more frequent half of the roots) with C children
                each; a child fires only when its parent fires, with conditional probability
                `child_prob` (the setting of Chanin et al. 2024 where absorption appears).
An active feature has magnitude U(1 - spread, 1 + spread) (bounded away from 0 so "active" is
unambiguous); x = sum of magnitude * direction, plus optional isotropic Gaussian noise.

Files next to the cache's shards and manifest.json: `truth.safetensors` (directions [N, d], prob
[N] marginal, cond_prob [N] (a child's P(fire | parent fires); a root's own prob), parent [N]
(-1 for roots), group [N] (-1 without correlation), the generation config as JSON metadata), and
the manifest's `synthetic` block (the config again, and the realised L0). Everything is seeded:
shard s draws from its own generator (seed, s), so the same config writes the same bytes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..activations.disk_cache import (
    CACHE_FORMAT,
    MANIFEST,
    STORE_DTYPES,
    _write_npy,
    read_manifest,
    shard_path,
    to_stored,
)
from ..budgets import need_memory, need_sane_tokens
from ..errors import UserError
from ..option_checks import check_types, need_at_least, need_choice
from ..options import opt, out_option, overwrite_option
from ..out_folder import ACTIVATION_CACHE, open_out
from ..sinks import SinkConfig
from ..storage import fingerprint, read_tensors, write_json, write_tensors

HOOK = "synthetic"  # the cache's one hookpoint (train with --hookpoints synthetic)
MODEL = "synthetic"  # its model spec (train with --model synthetic); no LM exists behind it
TRUTH = "truth.safetensors"
SUB_BATCH = 4096  # vectors drawn at once: bounds the [rows, N] firing mask in memory


@dataclass
class SyntheticConfig:
    out: str = out_option("cache folder to write (shards + manifest.json + truth.safetensors)")
    features: int = opt(4096, "true features N")
    dim: int = opt(256, "activation dimension d")
    k_true: float = opt(16.0, "expected number of active true features per vector")
    tokens: int = opt(1_000_000, "vectors to generate")
    zipf: float = opt(0.5, "firing probability of the feature of rank r is proportional to r^-zipf (0: all equal)")
    magnitude_spread: float = opt(0.5, "an active feature's magnitude is uniform in [1 - spread, 1 + spread]")
    correlation: float = opt(0.0, "latent (copula) correlation of root features within one group (0: independent)")
    correlation_groups: int = opt(16, "groups of root features that share a correlated factor")
    hierarchy: str | None = opt(
        None, "'PxC': P parent features with C children each; a child fires only with its parent"
    )
    child_prob: float = opt(0.3, "hierarchy: probability that a child fires when its parent fires")
    noise: float = opt(0.0, "std of isotropic Gaussian noise added per dimension")
    context: int = opt(256, "row length recorded for training (train's --context must match; no meaning here)")
    shard_vectors: int = opt(65536, "vectors per shard file")
    store_dtype: str = opt("float32", "precision of the stored vectors: float32 | float16 | bfloat16")
    seed: int = opt(0, "random seed (truth and samples)")
    overwrite: bool = overwrite_option("an existing cache folder")

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "features", "dim", "tokens", "shard_vectors", "correlation_groups")
        need_sane_tokens(self.tokens)
        need_at_least(self, 2, "context")
        need_at_least(self, 0, "seed")
        need_at_least(self, 0.0, "zipf", "noise")
        need_choice(self, "store_dtype", STORE_DTYPES)
        if not self.k_true > 0:
            raise UserError(f"--k-true must be positive, got {self.k_true}")
        if self.k_true > self.features:
            raise UserError(
                f"--k-true {self.k_true} is more than --features {self.features}: at most every feature can be active"
            )
        if not 0 <= self.magnitude_spread < 1:
            raise UserError("--magnitude-spread must be in [0, 1) (magnitudes stay positive)")
        if not 0 <= self.correlation < 1:
            raise UserError("--correlation must be in [0, 1)")
        if not 0 < self.child_prob <= 1:
            raise UserError("--child-prob must be in (0, 1]")
        parents, children = self.hierarchy_shape()
        roots = self.features - parents * children
        if parents and parents > (roots + 1) // 2:
            raise UserError(
                f"--hierarchy {self.hierarchy}: {parents} parents need at least {2 * parents - 1} root "
                f"features (parents come from the frequent half of the roots); "
                f"{self.features} features leave {roots} roots"
            )
        if self.k_true > self.max_expected_l0():
            raise UserError(
                f"--k-true {self.k_true} cannot be reached: with this hierarchy at most "
                f"{self.max_expected_l0():.1f} features are active on average"
            )
        need_memory(self.memory_bytes(), f"--features {self.features} x --dim {self.dim}", "Lower --features or --dim")

    def memory_bytes(self) -> int:
        """A lower bound of the peak: the true dictionary as it is made ([N, d] float64 twice, then float32),
        one sub-batch's [4096, N] uniforms + firing mask (+ the copula's normals), one shard of vectors twice."""
        mask = SUB_BATCH * self.features * (9 if self.correlation > 0 else 5)
        return 20 * self.features * self.dim + mask + 8 * self.shard_vectors * self.dim

    def disk_bytes(self) -> int:
        """What the cache takes on disk: the vectors at --store-dtype, and the true directions (float32)."""
        itemsize = 4 if self.store_dtype == "float32" else 2
        return self.tokens * self.dim * itemsize + 4 * self.features * self.dim

    def hierarchy_shape(self) -> tuple[int, int]:
        """(parents, children per parent) of --hierarchy 'PxC'; (0, 0) without one."""
        if not self.hierarchy:
            return 0, 0
        p, x, c = self.hierarchy.lower().partition("x")
        try:
            parents, children = int(p), int(c)
        except ValueError:
            raise UserError(
                f"--hierarchy {self.hierarchy!r}: expected 'PxC', e.g. 64x4 (64 parents, 4 children each)"
            ) from None
        if not x or parents < 1 or children < 1:
            raise UserError(f"--hierarchy {self.hierarchy!r}: P and C must be positive, e.g. 64x4")
        if parents * children >= self.features:
            raise UserError(
                f"--hierarchy {self.hierarchy}: {parents * children} children leave no root features "
                f"of --features {self.features}"
            )
        return parents, children

    def max_expected_l0(self) -> float:
        parents, children = self.hierarchy_shape()
        return self.features - parents * children + parents * children * self.child_prob


@dataclass
class SyntheticTruth:
    directions: torch.Tensor  # [N, d] unit rows
    prob: torch.Tensor  # [N] marginal firing probability
    cond_prob: torch.Tensor  # [N] a child's P(fire | parent fires); a root's own probability
    parent: torch.Tensor  # [N] long, -1 for roots
    group: torch.Tensor  # [N] long correlation group of a root, -1 for none
    cfg: SyntheticConfig

    @property
    def children(self) -> torch.Tensor:
        return (self.parent >= 0).nonzero().flatten()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "directions": self.directions,
            "prob": self.prob,
            "cond_prob": self.cond_prob,
            "parent": self.parent,
            "group": self.group,
        }


def _zipf_scale(weights: torch.Tensor, child_mass: torch.Tensor, target: float) -> torch.Tensor:
    """Root probabilities min(1, c * weights) with c set (bisection) so that the expected L0,
    sum_r p_r * (1 + child_mass_r), equals `target` (child_mass_r: children x child_prob of root r)."""

    def total(c: float) -> float:
        return float(((c * weights).clamp(max=1.0) * (1 + child_mass)).sum())

    lo, hi = 0.0, 1.0
    while total(hi) < target and hi < 1e12:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < target else (lo, mid)
    return (hi * weights).clamp(max=1.0)


def make_truth(cfg: SyntheticConfig) -> SyntheticTruth:
    """The true dictionary and its firing statistics, from `cfg.seed` alone."""
    cfg.validate()
    g = torch.Generator().manual_seed(cfg.seed)
    n, parents_n, per = cfg.features, *cfg.hierarchy_shape()
    d = torch.randn(n, cfg.dim, generator=g, dtype=torch.float64)
    d = (d / d.norm(dim=1, keepdim=True)).float()
    roots = n - parents_n * per  # roots are features [0, roots) in rank order; children follow
    parent = torch.full((n,), -1, dtype=torch.long)
    if parents_n:
        chosen = torch.randperm((roots + 1) // 2, generator=g)[:parents_n]  # parents: frequent half of roots
        parent[roots:] = chosen.repeat_interleave(per)
    child_mass = torch.zeros(roots, dtype=torch.float64)
    if parents_n:
        child_mass.index_add_(0, parent[roots:], torch.full((parents_n * per,), cfg.child_prob, dtype=torch.float64))
    weights = torch.arange(1, roots + 1, dtype=torch.float64).pow(-cfg.zipf)
    p_root = _zipf_scale(weights, child_mass, cfg.k_true)
    prob = torch.zeros(n, dtype=torch.float64)
    prob[:roots] = p_root
    cond = prob.clone()
    if parents_n:
        cond[roots:] = cfg.child_prob
        prob[roots:] = p_root[parent[roots:]] * cfg.child_prob
    group = torch.full((n,), -1, dtype=torch.long)
    if cfg.correlation > 0:
        group[:roots] = torch.randint(cfg.correlation_groups, (roots,), generator=g)
    return SyntheticTruth(d, prob.float(), cond.float(), parent, group, cfg)


class Sample:
    """Vectors drawn from the truth, with which features made them (for recovery's precision/recall)."""

    def __init__(self, x: torch.Tensor, active: torch.Tensor):
        self.x = x  # [rows, d]
        self.active = active  # [rows, N] bool


def draw(truth: SyntheticTruth, rows: int, g: torch.Generator) -> Sample:
    """`rows` vectors: the firing pattern (copula for correlation, then children given parents),
    magnitudes, the sum of directions, noise. Draws in a fixed order from `g` (deterministic)."""
    cfg, n = truth.cfg, truth.prob.shape[0]
    if cfg.correlation > 0:
        n_groups = cfg.correlation_groups
        common = torch.randn(rows, n_groups, generator=g)
        z = torch.randn(rows, n, generator=g) * math.sqrt(1 - cfg.correlation)
        roots = truth.group >= 0
        z[:, roots] += math.sqrt(cfg.correlation) * common[:, truth.group[roots]]
        active = z < torch.special.ndtri(truth.prob.clamp(1e-12, 1 - 1e-7))
    else:
        active = torch.rand(rows, n, generator=g) < truth.prob
    kids = truth.children
    if len(kids):
        active[:, kids] = active[:, truth.parent[kids]] & (
            torch.rand(rows, len(kids), generator=g) < truth.cond_prob[kids]
        )
    r, f = active.nonzero(as_tuple=True)
    mags = 1 + cfg.magnitude_spread * (2 * torch.rand(len(f), generator=g) - 1)
    counts = torch.bincount(r, minlength=rows)
    x = F.embedding_bag(f, truth.directions, torch.cumsum(counts, 0) - counts, per_sample_weights=mags, mode="sum")
    if cfg.noise > 0:
        x = x + cfg.noise * torch.randn(rows, cfg.dim, generator=g)
    return Sample(x, active)


def write_synthetic(cfg: SyntheticConfig) -> Path:
    """Generate the truth and `cfg.tokens` vectors -> an activation cache folder (manifest last)."""
    cfg.validate()
    folder = open_out(
        cfg.out, ACTIVATION_CACHE, cfg.overwrite, need_bytes=cfg.disk_bytes()
    )  # a synthetic activation cache
    truth = make_truth(cfg)
    out = folder.prepare()  # --overwrite: an earlier cache's shards, manifest and truth go, nothing else
    config = asdict(cfg)
    write_tensors(out / TRUTH, truth.tensors(), metadata={"config": json.dumps(config)})
    fp = fingerprint("synthetic", {k: v for k, v in config.items() if k not in ("out", "overwrite")})
    shards, active_total, t0 = [], 0, time.time()
    bar = tqdm(total=cfg.tokens, unit="vec", unit_scale=True, desc="synthetic")
    for s, start in enumerate(range(0, cfg.tokens, cfg.shard_vectors)):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s + 1)  # shard s: its own stream
        n_vec = min(cfg.shard_vectors, cfg.tokens - start)
        parts = []
        for a in range(0, n_vec, SUB_BATCH):
            smp = draw(truth, min(SUB_BATCH, n_vec - a), g)
            parts.append(smp.x)
            active_total += int(smp.active.sum())
            bar.update(smp.x.shape[0])
        _write_npy(shard_path(out, s, HOOK), to_stored(torch.cat(parts), cfg.store_dtype))
        shards.append({"index": s, "vectors": n_vec, "lm_tokens": n_vec, "excluded": 0})
    bar.close()
    wall = time.time() - t0
    rows = -(-cfg.tokens // cfg.context)
    manifest = {
        "kind": "saelab activation cache",
        "format_version": CACHE_FORMAT,
        "saelab_version": __version__,
        "model": {"spec": MODEL, "name": MODEL},
        "hookpoints": [HOOK],
        "widths": {HOOK: cfg.dim},
        "context": cfg.context,
        "dtype": cfg.store_dtype,
        "sink": asdict(SinkConfig.off()),
        "seed": cfg.seed,
        "data": {
            "source": f"synthetic:{fp}",
            "text_field": "text",
            "heldout_fraction": 0.05,
            "fingerprint": fp,
            "rows": rows,
            "train_rows": rows,
            "heldout_rows": 0,
            "split": "train",
            "epochs": 1.0,
        },
        "config": config,
        "synthetic": {
            "config": config,
            "truth": TRUTH,
            "realised_l0": active_total / cfg.tokens,
            "expected_l0": float(truth.prob.sum()),
        },
        "shards": shards,
        "complete": True,
        "lm_tokens": cfg.tokens,
        "vectors": cfg.tokens,
        "wall_s": wall,
        "tokens_per_s": cfg.tokens / max(wall, 1e-9),
        "bytes": sum(p.stat().st_size for p in out.glob("shard_*.npy")),
    }
    write_json(out / MANIFEST, manifest)
    folder.done()
    return out


def load_truth(cache: Path) -> SyntheticTruth:
    """The truth of a synthetic cache; a UserError when `cache` is an activation cache of a real model."""
    cache = Path(cache)
    m = read_manifest(cache)
    if "synthetic" not in m:
        raise UserError(
            f"activation cache {cache} holds activations of model {m['model']['spec']!r}, not synthetic "
            f"data (make one with `saelab synthetic`)"
        )
    t = read_tensors(cache / m["synthetic"].get("truth", TRUTH))
    missing = {"directions", "prob", "cond_prob", "parent", "group"} - set(t)
    if missing:
        raise UserError(f"{cache / TRUTH} lacks {', '.join(sorted(missing))}; the synthetic cache is damaged")
    fields = set(SyntheticConfig.__dataclass_fields__)
    cfg = SyntheticConfig(**{k: v for k, v in m["synthetic"]["config"].items() if k in fields})
    return SyntheticTruth(
        t["directions"].float(), t["prob"].float(), t["cond_prob"].float(), t["parent"].long(), t["group"].long(), cfg
    )


def synthetic_summary(folder: Path) -> str:
    m = read_manifest(folder)
    c = m["synthetic"]["config"]
    return (
        f"{folder}: {m['vectors']:,} vectors of {c['features']} true features in {c['dim']} dims "
        f"(L0 {m['synthetic']['realised_l0']:.2f}); train with `saelab train --from-activations {folder} "
        f"--model {MODEL} --hookpoints {HOOK} --context {m['context']} --dict-size N --k K`"
    )
