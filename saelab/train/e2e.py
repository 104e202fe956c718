"""End-to-end sparse dictionary learning (Braun et al. 2024): the e2e and e2e+ds losses and the
training loop over token batches that they need.

Losses for one SAE with its output spliced in at its site (sink/outlier positions keep their
clean activation there, exactly as evaluation splices):
  e2e     kl_coeff * KL(p_clean || p_spliced)  (mean over positions, nats)  + sparsity / d_in
  e2e+ds  e2e + downstream_coeff / |D| * sum_{j in D} MSE(h_j spliced, h_j clean)
where D are the later blocks (all by default), MSE is per element over non-sink positions (as the
paper's code: F.mse_loss), and the sparsity term is the SAE's own penalty (decoder-norm-weighted
L1 for relu, L0 for jumprelu; 0 for topk/batchtopk, whose sparsity is k) divided by d_in, so one
coefficient means the same across model widths. There is no AuxK term in e2e: it would pull dead
latents towards reconstructing the input, which is the local objective.

Batch logic (why it is cheap): per optimiser batch of whole token rows, micro-batches of
`e2e_micro_rows` rows; each micro-batch runs ONE clean forward without grad (clean log-probs,
SAE inputs, later block outputs), shared by every SAE being trained; each SAE then runs only the
blocks after its site (`e2e_forward.spliced_pass`) and backpropagates into its own parameters
(model weights are frozen). Gradients are accumulated over micro-batches, then each SAE steps.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..sinks import excluded_positions, special_ids
from .checkpoint import load_checkpoint
from .e2e_forward import CleanPass, SitePlan, check_head, clean_pass, kl_to_clean, layer_name, plan_site, spliced_pass
from .schedule import lr_factor

LOSSES = ("local", "e2e", "e2e+ds")


def validate_e2e_options(cfg) -> None:
    """Checks that need no model (called from TrainConfig.validate)."""
    if cfg.loss not in LOSSES:
        raise UserError(f"unknown --loss {cfg.loss!r}; choose from {', '.join(LOSSES)}")
    if cfg.kl_coeff <= 0:
        raise UserError("--kl-coeff must be positive")
    if cfg.downstream_coeff < 0:
        raise UserError("--downstream-coeff must be >= 0")
    if cfg.downstream_layers is not None and cfg.loss != "e2e+ds":
        raise UserError("--downstream-layers only applies to --loss e2e+ds")
    if cfg.e2e_micro_rows is not None and cfg.e2e_micro_rows < 1:
        raise UserError("--e2e-micro-rows must be positive")
    if cfg.loss != "local" and getattr(cfg, "from_activations", None):
        raise UserError(f"--loss {cfg.loss} needs the model's forward pass; it cannot train from an activation cache "
                        f"(--from-activations)")


def plan_members(model, members, cfg) -> tuple[list[SitePlan], list[tuple[int, ...]]]:
    """Each member's spliced-pass plan and downstream blocks; bad sites fail here, before training."""
    plans, ds = [], []
    for m in members:
        c = m.sae.cfg
        site = c.out_hookpoint or c.hookpoint
        p = plan_site(model, site)
        if not p.later:
            raise UserError(f"--loss {cfg.loss}: hookpoint {site!r} has no later layers (it is the last block's "
                            f"output); choose an earlier hookpoint or --loss local")
        layers = p.later
        if cfg.loss == "e2e+ds" and cfg.downstream_layers:
            n = max(p.later) + 1
            for j in cfg.downstream_layers:
                if not 0 <= j < n:
                    raise UserError(f"--downstream-layers {j}: the model has {n} blocks (0..{n - 1})")
                if j not in p.later:
                    raise UserError(f"--downstream-layers {j}: block {j} is not after hookpoint {site!r} "
                                    f"(later blocks: {p.later[0]}..{p.later[-1]})")
            layers = tuple(sorted(set(cfg.downstream_layers)))
        plans.append(p)
        ds.append(layers if cfg.loss == "e2e+ds" else ())
    return plans, ds


def e2e_loss(model, sae, clean: CleanPass, plan: SitePlan, drop: torch.Tensor, ds_layers: tuple[int, ...],
             kl_coeff: float, downstream_coeff: float, recompute: bool = False):
    """-> (loss of one SAE on one (micro-)batch, its statistics, its latents).

    drop [B, T] bool: sink/outlier positions, which keep their clean activation at the site."""
    c = sae.cfg
    keep = ~drop
    x = clean.acts[c.hookpoint][keep].float()                 # [N, d_in] SAE input (clean)
    site_clean = clean.acts[plan.site]                         # [B, T, d_out]
    out = sae(x)
    recon = out.recon / sae.out_scale                          # [N, d_out] raw space
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
    stats = {"kl": kl.item(), "ds_mse": float(ds.detach()), "fvu": fvu.item(),
             "l0": out.latents.values.gt(0).sum().item() / max(1, x.shape[0]), "loss": loss.item()}
    return loss, stats, out.latents


def run_e2e(trainer) -> list:
    """The e2e training loop; uses the Trainer's setup, members, checkpoint identity and save."""
    from .trainer import TrainingDiverged, _maybe_die_for_test, _wandb

    cfg = trainer.cfg
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise UserError(f"--loss {cfg.loss} trains in one process; distributed e2e training is not implemented "
                        f"(run it without torchrun)")
    logger = _wandb(cfg)
    trainer.setup()
    model = trainer.lm.model
    check_head(model, cfg.device)
    plans, ds_layers = plan_members(model, trainer.members, cfg)
    trainer.loss_extra = {"kl_coeff": cfg.kl_coeff}
    if cfg.loss == "e2e+ds":
        trainer.loss_extra |= {"downstream_coeff": cfg.downstream_coeff,
                               "downstream_layers": [layer_name(model, j) for j in ds_layers[0]]}
    sites = sorted({s for m in trainer.members for s in (m.sae.cfg.hookpoint, m.sae.cfg.out_hookpoint) if s})
    later_blocks = {j for d in ds_layers for j in d}
    special = special_ids(trainer.lm.tokenizer)
    rows_per_batch = max(1, cfg.batch_tokens // cfg.context)
    micro = cfg.e2e_micro_rows or min(rows_per_batch, 8)
    n_steps = math.ceil(math.ceil(cfg.tokens / cfg.context) / rows_per_batch)
    order = trainer.stream.order
    total = n_steps * rows_per_batch * cfg.context

    step, lm_seen, t_prev, excluded = 0, 0, 0.0, 0
    if trainer.resume_meta:
        meta = trainer.resume_meta
        if meta.get("identity") != trainer._identity() or "next_step" not in meta:
            raise UserError(f"--resume: the checkpoint in {trainer.out} was written by a different configuration "
                            f"(model, data, SAEs, loss or hyperparameters changed); start a new --out instead")
        load_checkpoint(trainer.out, trainer.members)
        step, lm_seen, t_prev, excluded = meta["next_step"], meta["lm_tokens"], meta["wall_s"], meta.get("excluded", 0)
        print(f"saelab: resuming at {lm_seen:,} tokens (step {step})", flush=True)
    t0 = time.time() - t_prev
    next_ckpt = (lm_seen // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    bar = tqdm(total=total, initial=lm_seen, unit="tok", unit_scale=True, desc=f"train ({cfg.loss})",
               smoothing=0.05, dynamic_ncols=True)
    t_loop = time.time()
    last_inputs: dict[int, torch.Tensor] = {}  # recent raw SAE inputs, for `finalize` (BatchTopK threshold)
    for step in range(step, n_steps):
        sel = np.sort(order[step * rows_per_batch:(step + 1) * rows_per_batch])
        ids_all = torch.from_numpy(np.asarray(trainer.rows.tokens[sel], dtype=np.int64)).to(cfg.device)
        factor = lr_factor(step / n_steps, cfg.warmup_fraction, cfg.decay_fraction)
        for m in trainer.members:
            m.opt.zero_grad(set_to_none=True)
        sums = [dict() for _ in trainer.members]
        fired = [torch.zeros(m.sae.cfg.d_sae, dtype=torch.bool) for m in trainer.members]
        for r in range(0, len(sel), micro):
            ids = ids_all[r:r + micro]
            weight = ids.shape[0] / len(sel)
            clean = clean_pass(model, ids, sites, plans, later_blocks)
            if step == 0 and r == 0:
                _init_from_clean(trainer, clean, special, cfg)
            for i, (m, plan) in enumerate(zip(trainer.members, plans)):
                c = m.sae.cfg
                drop = excluded_positions([clean.acts[c.hookpoint]] + ([clean.acts[c.out_hookpoint]] if c.out_hookpoint else []),
                                          ids, trainer.sink, special)
                if i == 0:
                    excluded += int(drop.sum())
                last_inputs[i] = clean.acts[c.hookpoint][~drop].float()[:16384]
                loss, s, lat = e2e_loss(model, m.sae, clean, plan, drop, ds_layers[i], cfg.kl_coeff,
                                        cfg.downstream_coeff, cfg.e2e_recompute)
                if not math.isfinite(s["loss"]) or s["loss"] > 1e4:
                    raise TrainingDiverged(
                        f"{m.name}: loss became {s['loss']:.3g}; stopped. The last good checkpoint in {trainer.out} "
                        f"is kept; lower --lr (now {m.lr:.2g}) and rerun with --resume or from scratch")
                (loss * weight).backward()
                fired[i] |= lat.fire_counts().cpu() > 0
                for key, v in s.items():
                    sums[i][key] = sums[i].get(key, 0.0) + v * weight
        for i, m in enumerate(trainer.members):
            for g in m.opt.param_groups:
                g["lr"] = m.lr * factor
            m.sae.remove_parallel_decoder_grad()
            m.opt.step()
            m.sae.normalize_decoder()
            m.since_fired += ids_all.numel()
            m.since_fired[fired[i]] = 0
            sums[i]["dead"] = (m.since_fired >= trainer.dead_tokens).float().mean().item()
            for key, v in sums[i].items():
                m.stats[key] = v if key not in m.stats else 0.9 * m.stats[key] + 0.1 * v
        lm_seen += ids_all.numel()
        bar.update(ids_all.numel())
        head = trainer.members[0].stats
        bar.set_postfix_str(f"kl {head['kl']:.4f}" + (f" ds {head['ds_mse']:.3g}" if ds_layers[0] else "")
                            + f" fvu {head['fvu']:.3f} l0 {head['l0']:.1f} dead {100 * head['dead']:.1f}%"
                            + (f" (+{len(trainer.members) - 1} SAEs)" if len(trainer.members) > 1 else ""))
        trainer.append_log(lm_seen, step + 1, time.time() - t0)  # kl, ds_mse, fvu, l0, dead per step
        if logger:
            logger.log({f"{m.name}/{k}": v for m in trainer.members for k, v in m.stats.items()} | {"tokens": lm_seen})
        if lm_seen >= next_ckpt and step < n_steps - 1:
            trainer._checkpoint({"identity": trainer._identity(), "next_step": step + 1,
                                                           "lm_tokens": lm_seen, "steps": step + 1, "excluded": excluded,
                                                           "wall_s": time.time() - t0})
            next_ckpt = (lm_seen // cfg.checkpoint_every + 1) * cfg.checkpoint_every
            _maybe_die_for_test()
    bar.close()
    for i, m in enumerate(trainer.members):
        if i in last_inputs:
            m.sae.finalize(last_inputs[i])
    return trainer._save(lm_seen, n_steps, time.time() - t0, excluded, time.time() - t_loop)


@torch.no_grad()
def _init_from_clean(trainer, clean: CleanPass, special, cfg) -> None:
    """Scales and decoder bias from the first batch's non-sink activations (as local training does)."""
    for m in trainer.members:
        c = m.sae.cfg
        x, y = clean.acts[c.hookpoint], clean.acts[c.out_hookpoint or c.hookpoint]
        keep = ~excluded_positions([x, y] if c.out_hookpoint else [x], clean.ids, trainer.sink, special)
        m.sae.init_from_data(x[keep].float()[:16384], y[keep].float()[:16384], cfg.bias_init)
