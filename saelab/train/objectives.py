"""Training objectives behind one interface, so one loop trains every kind of dictionary.

An objective turns one batch into, per SAE, a differentiable loss and its statistics:

    split(batch)                 -> [(part, weight)]   micro-batches whose weighted losses sum to the batch's
    shared(part)                 -> work shared by every SAE of the run (e2e: the clean forward)
    io(member, part, shared)     -> (x, y) raw non-sink SAE inputs and targets (data-dependent init, finalize)
    loss(member, part, shared, dead) -> StepLoss

Objectives:
  local    FVU of the reconstruction (+ the SAE's sparsity penalty + AuxK on dead latents + its extra_loss)
  e2e      kl_coeff * KL(p_clean || p_spliced) (nats/token) + sparsity penalty / d_in  (Braun et al. 2024)
  e2e+ds   e2e + downstream_coeff / |D| * sum_{j in D} MSE(h_j spliced, h_j clean)

For e2e the SAE's output is spliced in at its site (sink/outlier positions keep their clean
activation there, exactly as evaluation splices), the clean forward runs once per micro-batch for
every SAE, and each SAE runs only the blocks after its site (`e2e_forward.spliced_pass`). There
is no AuxK term in e2e: it would pull dead latents towards reconstructing the input, which is the
local objective. The sparsity term is divided by d_in so one coefficient means the same across
model widths; MSE is per element over non-sink positions (as the paper's code: F.mse_loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..sae.latents import keep_sparse_backward_eager
from ..sinks import SinkConfig, excluded_positions
from .e2e_forward import CleanPass, SitePlan, check_head, clean_pass, kl_to_clean, layer_name, plan_site, spliced_pass
from .members import Member
from .schedule import lr_factor
from .sources import Batch


class StepLoss(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable w.r.t. the SAE's parameters
    stats: dict[str, float]  # logged statistics (fvu, l0, ...), averaged over the batch's parts
    fired: torch.Tensor  # [d_sae] bool: latents that fired in this part
    excluded: int = 0  # sink/outlier positions the objective itself left out (e2e)


Shard = Callable[[Member, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RunSchedule:
    """Every objective's learning-rate factor for a batch: the run's schedule over its progress
    (finetune.SwitchObjective gives its fine-tune phase a schedule of its own)."""

    def lr_factor(self, batch: Batch, warmup: float, decay: float) -> float:
        return lr_factor(batch.progress, warmup, decay)


class LocalObjective(RunSchedule):
    """Reconstruct the target (the input, or the transcoder's output site) from shuffled activations."""

    name = "local"

    def __init__(self, compile: bool = False):
        self.shard: Shard = lambda m, x, y: (x, y)  # data-parallel training takes this rank's rows
        # --compile: the dictionary's forward and loss through torch.compile (inductor), never the LM.
        # dynamic=True: batches lose a varying number of sink rows, so one graph serves every row count.
        # What dynamo cannot trace (.item(), nonzero, the sparse backward of gather_preacts) stays eager.
        self._loss = torch.compile(sae_loss, dynamic=True) if compile else sae_loss
        if compile:  # a sweep (--k 16 32 64 x sites) compiles a graph per distinct SAE; past the limit
            # dynamo would silently run the rest eager
            keep_sparse_backward_eager()
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    def record(self) -> dict:
        return {"loss": self.name}

    def split(self, batch: Batch) -> list[tuple[Batch, float]]:
        return [(batch, 1.0)]

    def shared(self, part: Batch) -> None:
        return None

    def io(self, m: Member, part: Batch, shared=None) -> tuple[torch.Tensor, torch.Tensor]:
        c = m.sae.cfg
        return part.acts[c.hookpoint], part.acts[c.out_hookpoint or c.hookpoint]

    def loss(self, m: Member, part: Batch, shared, dead: torch.Tensor) -> StepLoss:
        x, y = self.shard(m, *self.io(m, part))
        loss, fvu, out = self._loss(m.sae, x, y, dead)
        l0 = out.latents.values.gt(0).sum().item() / x.shape[0]
        stats = {"fvu": fvu.item(), "l0": l0, "aux": out.aux_loss.item(), "loss": loss.item()}
        if out.extra_loss.requires_grad:  # matryoshka prefixes, gated auxiliary
            stats["arch_loss"] = out.extra_loss.item()
        return StepLoss(loss, stats, out.latents.fire_counts() > 0)


def sae_loss(sae, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor):
    """The local objective's hot function: (loss, FVU, SaeOutput) of one SAE on raw inputs x, targets y."""
    target = y * sae.out_scale
    out = sae(x, dead=dead, target=target)
    err = (out.recon - target).pow(2).sum()
    fvu = err / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return fvu + out.sparsity_loss + out.aux_loss + out.extra_loss, fvu, out


@dataclass
class _Clean:
    clean: CleanPass
    drops: dict[str, torch.Tensor]  # member name -> [B, T] bool sink/outlier positions at its site(s)


class EndToEndObjective(RunSchedule):
    """e2e / e2e+ds: the KL between the clean and the spliced model's next-token distributions."""

    def __init__(self, cfg, model, members: list[Member], sink: SinkConfig, special: list[int]):
        self.name, self.model, self.sink, self.special = cfg.loss, model, sink, special
        self.kl_coeff, self.downstream_coeff, self.recompute = cfg.kl_weight, cfg.downstream_coeff, cfg.e2e_recompute
        rows_per_batch = max(1, cfg.batch_tokens // cfg.context)
        self.micro = cfg.e2e_micro_rows or min(rows_per_batch, 8)
        check_head(model, cfg.device)
        self.plans: dict[str, SitePlan] = {}
        self.ds_layers: dict[str, tuple[int, ...]] = {}
        for m in members:  # bad sites fail here, before training
            self.plans[m.name], self.ds_layers[m.name] = _plan(model, m, cfg)
        self.sites = sorted({s for m in members for s in (m.sae.cfg.hookpoint, m.sae.cfg.out_hookpoint) if s})
        self.later_blocks = {j for d in self.ds_layers.values() for j in d}
        self.first_layers = next(iter(self.ds_layers.values()), ())

    def record(self) -> dict:
        rec = {"loss": self.name, "kl_coeff": self.kl_coeff}
        if self.name == "e2e+ds":
            rec |= {
                "downstream_coeff": self.downstream_coeff,
                "downstream_layers": [layer_name(self.model, j) for j in self.first_layers],
            }
        return rec

    def split(self, batch: Batch) -> list[tuple[Batch, float]]:
        n = batch.ids.shape[0]
        return [(Batch(ids=batch.ids[r : r + self.micro]), min(self.micro, n - r) / n) for r in range(0, n, self.micro)]

    def shared(self, part: Batch) -> _Clean:
        return _Clean(clean_pass(self.model, part.ids, self.sites, list(self.plans.values()), self.later_blocks), {})

    def _drop(self, m: Member, shared: _Clean) -> torch.Tensor:
        if m.name not in shared.drops:  # computed once per part, for io() and loss()
            c, acts = m.sae.cfg, shared.clean.acts
            sites = [acts[c.hookpoint]] + ([acts[c.out_hookpoint]] if c.out_hookpoint else [])
            shared.drops[m.name] = excluded_positions(sites, shared.clean.ids, self.sink, self.special)
        return shared.drops[m.name]

    def io(self, m: Member, part: Batch, shared: _Clean) -> tuple[torch.Tensor, torch.Tensor]:
        c, keep = m.sae.cfg, ~self._drop(m, shared)
        acts = shared.clean.acts
        return acts[c.hookpoint][keep].float(), acts[c.out_hookpoint or c.hookpoint][keep].float()

    def loss(self, m: Member, part: Batch, shared: _Clean, dead: torch.Tensor) -> StepLoss:
        drop = self._drop(m, shared)
        loss, stats, latents = e2e_loss(
            self.model,
            m.sae,
            shared.clean,
            self.plans[m.name],
            drop,
            self.ds_layers[m.name],
            self.kl_coeff,
            self.downstream_coeff,
            self.recompute,
        )
        return StepLoss(loss, stats, latents.fire_counts() > 0, int(drop.sum()))


def _plan(model, m: Member, cfg) -> tuple[SitePlan, tuple[int, ...]]:
    """The spliced-pass plan of one SAE and the blocks its downstream loss matches."""
    c = m.sae.cfg
    site = c.out_hookpoint or c.hookpoint
    p = plan_site(model, site)
    if not p.later:
        raise UserError(
            f"--loss {cfg.loss}: hookpoint {site!r} has no later layers (it is the last block's "
            f"output); choose an earlier hookpoint or --loss local"
        )
    if cfg.loss != "e2e+ds":
        return p, ()
    layers = p.later
    if cfg.downstream_layers:
        n = max(p.later) + 1
        for j in cfg.downstream_layers:
            if not 0 <= j < n:
                raise UserError(f"--downstream-layers {j}: the model has {n} blocks (0..{n - 1})")
            if j not in p.later:
                raise UserError(
                    f"--downstream-layers {j}: block {j} is not after hookpoint {site!r} "
                    f"(later blocks: {p.later[0]}..{p.later[-1]})"
                )
        layers = tuple(sorted(set(cfg.downstream_layers)))
    return p, layers


def e2e_loss(
    model,
    sae,
    clean: CleanPass,
    plan: SitePlan,
    drop: torch.Tensor,
    ds_layers: tuple[int, ...],
    kl_coeff: float,
    downstream_coeff: float,
    recompute: bool = False,
):
    """-> (loss of one SAE on one (micro-)batch, its statistics, its latents).

    drop [B, T] bool: sink/outlier positions, which keep their clean activation at the site."""
    c = sae.cfg
    keep = ~drop
    x = clean.acts[c.hookpoint][keep].float()  # [N, d_in] SAE input (clean)
    site_clean = clean.acts[plan.site]  # [B, T, d_out]
    out = sae(x)
    recon = out.recon / sae.out_scale  # [N, d_out] raw space
    replacement = site_clean.index_put((keep,), recon.to(site_clean.dtype))
    hidden, later = spliced_pass(model, clean, plan, replacement, recompute)
    kl = kl_to_clean(model, hidden, clean.logp, recompute=recompute) / clean.ids.numel()
    loss = kl_coeff * kl + out.sparsity_loss / c.d_in
    ds = hidden.new_zeros(())
    if ds_layers:
        ds = sum(F.mse_loss(later[j][keep].float(), clean.later[j][keep].float()) for j in ds_layers) / len(ds_layers)
        loss = loss + downstream_coeff * ds
    with torch.no_grad():
        y = site_clean[keep].float()
        fvu = (recon - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
    stats = {
        "kl": kl.item(),
        "ds_mse": float(ds.detach()),
        "fvu": fvu.item(),
        "l0": out.latents.values.gt(0).sum().item() / max(1, x.shape[0]),
        "loss": loss.item(),
    }
    return loss, stats, out.latents


def make_objective(cfg, model, members: list[Member], sink: SinkConfig, special: list[int]):
    if cfg.loss == "local":
        return LocalObjective(cfg.compile)
    return EndToEndObjective(cfg, model, members, sink, special)
