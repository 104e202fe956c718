"""The KL+MSE fine-tune (Karvonen 2025, "Revisiting End-To-End Sparse Autoencoder Training: A Short
Finetune Is All You Need"): a short phase that teaches a locally trained dictionary what the model
downstream of its site needs, without forgetting how to reconstruct.

    loss = c * KL(p_clean || p_spliced) + lambda * (FVU + sparsity penalty + AuxK)

c is --kl-coeff (default 1 here: the two terms weigh the same). KL in nats per token, exactly as the
e2e objective computes it (the clean pass, the spliced pass from the site, sink/outlier positions
kept clean: `objectives.EndToEndObjective`, whose passes this class reuses). FVU is the local
objective's normalised MSE at the replaced site; the sparsity penalty (ReLU, JumpReLU) and AuxK keep
their weight relative to the FVU, so "k / sparsity unchanged" holds in the sense of the local run. k
itself is the dictionary's.

The balance lambda is set automatically so the two terms have the same magnitude (the paper's
dynamic loss balancing): lambda = running KL / running FVU, the exponential moving averages the
run keeps anyway (`Member.smooth`, factor 0.9, i.e. ~10 steps) up to the previous step. On the first
fine-tune step (no running KL yet) it is this part's own KL / FVU. The running averages live in
the checkpoint, so a resumed run uses the same lambda; the value used is logged as `mse_weight`.

`--finetune-fraction F` on a local run switches to this objective for the last F of the token
budget (`SwitchObjective` here, `sources.PhasedSource` for the data): one loop. The fine-tune phase
trains exactly as `--init-from ... --loss kl+mse` would: fresh Adam moments (the local phase's
second moments are those of FVU gradients, and with ~10 fine-tune steps Adam's 0.999 average never
adapts to the KL's: measured, the carried-over state made KL and FVU *worse* step after step) and
its own schedule at a tenth of the run's learning rate (the kl+mse default), warm-up and decay
over the phase (the local phase's decayed rate, ~1e-3 at the switch, is what the lr sweep found
too high for a fine-tune).
"""

from __future__ import annotations

import torch

from ..sinks import SinkConfig
from .config import FINETUNE_LR_SHARE
from .e2e_forward import kl_to_clean, spliced_pass
from .members import Member
from .objectives import EndToEndObjective, LocalObjective, RunSchedule, StepLoss
from .objectives import make_objective as make_base_objective
from .schedule import lr_factor
from .sources import Batch


class KlMseObjective(EndToEndObjective):
    """kl+mse: the e2e clean/spliced passes, plus the local FVU at the site, balanced automatically."""

    def __init__(self, cfg, model, members: list[Member], sink: SinkConfig, special: list[int]):
        super().__init__(cfg, model, members, sink, special)
        self.name = "kl+mse"

    def record(self) -> dict:
        return {
            "loss": self.name,
            "kl_coeff": self.kl_coeff,
            "mse_weight": "auto: running KL / running FVU (docs/E2E.md)",
        }

    def loss(self, m: Member, part: Batch, shared, dead: torch.Tensor) -> StepLoss:
        clean, plan, sae = shared.clean, self.plans[m.name], m.sae
        drop = self._drop(m, shared)
        keep = ~drop
        x = clean.acts[sae.cfg.hookpoint][keep].float()
        site_clean = clean.acts[plan.site]
        target = site_clean[keep].float() * sae.out_scale
        out = sae(x, dead=dead, target=target)
        recon = out.recon / sae.out_scale
        replacement = site_clean.index_put((keep,), recon.to(site_clean.dtype))
        hidden, _ = spliced_pass(self.model, clean, plan, replacement, self.recompute)
        kl = kl_to_clean(self.model, hidden, clean.logp, recompute=self.recompute) / clean.ids.numel()
        fvu = (out.recon - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
        weight = mse_weight(m.stats, kl.item(), fvu.item())
        loss = self.kl_coeff * kl + weight * (fvu + out.sparsity_loss + out.aux_loss)
        stats = {
            "kl": kl.item(),
            "fvu": fvu.item(),
            "mse_weight": weight,
            "aux": out.aux_loss.item(),
            "l0": out.latents.values.gt(0).sum().item() / max(1, x.shape[0]),
            "loss": loss.item(),
        }
        return StepLoss(loss, stats, out.latents.fire_counts() > 0, int(drop.sum()))


def mse_weight(running: dict, kl: float, fvu: float) -> float:
    """lambda = running KL / running FVU (this part's values before any running KL exists)."""
    if "kl" in running and running.get("fvu", 0.0) > 0:
        kl, fvu = running["kl"], running["fvu"]
    return kl / max(fvu, 1e-12)


class SwitchObjective(RunSchedule):
    """--finetune-fraction: local on activation batches, kl+mse on token-row batches (the last phase)."""

    def __init__(self, local: LocalObjective, finetune: KlMseObjective, fraction: float):
        self.local, self.finetune, self.fraction = local, finetune, fraction
        self.name = "local"

    @property
    def shard(self):
        return self.local.shard

    @shard.setter
    def shard(self, fn) -> None:  # data-parallel training shards the local phase
        self.local.shard = fn

    def _of(self, batch: Batch):
        return self.local if batch.ids is None else self.finetune

    def lr_factor(self, batch: Batch, warmup: float, decay: float) -> float:
        """The local phase follows the run's schedule; the fine-tune phase its own at FINETUNE_LR_SHARE."""
        if batch.ids is None:
            return super().lr_factor(batch, warmup, decay)
        phase = (batch.progress - (1 - self.fraction)) / self.fraction
        return FINETUNE_LR_SHARE * lr_factor(phase, warmup, decay)

    def record(self) -> dict:
        return self.local.record() | {
            "finetune": self.finetune.name,
            "finetune_fraction": self.fraction,
            "kl_coeff": self.finetune.kl_coeff,
        }

    def split(self, batch: Batch):
        return self._of(batch).split(batch)

    def shared(self, part: Batch):
        return self._of(part).shared(part)

    def io(self, m: Member, part: Batch, shared=None):
        return self._of(part).io(m, part, shared)

    def loss(self, m: Member, part: Batch, shared, dead: torch.Tensor) -> StepLoss:
        if part.ids is not None and "kl" not in m.stats:  # the fine-tune's first step (resumes alike:
            m.opt.state.clear()  # the running KL is in the checkpoint)
        return self._of(part).loss(m, part, shared, dead)


def make_objective(cfg, model, members: list[Member], sink: SinkConfig, special: list[int]):
    """objectives.make_objective, plus kl+mse and the --finetune-fraction switch."""
    if cfg.loss == "kl+mse":
        return KlMseObjective(cfg, model, members, sink, special)
    if cfg.finetune_fraction:
        return SwitchObjective(
            LocalObjective(), KlMseObjective(cfg, model, members, sink, special), cfg.finetune_fraction
        )
    return make_base_objective(cfg, model, members, sink, special)
