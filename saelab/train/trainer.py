"""The training loop: for each chunk of shuffled activations, one optimiser step per batch for
every SAE. Many SAEs (hookpoints x k / sparsity values) share each LM forward.

Read top to bottom: prepare (validate, load, build) -> resume -> loop over chunks -> save.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import check_source, load_token_rows
from ..errors import UserError
from ..models import hookpoint_widths, layer_index, load_model, resolve_hookpoints
from ..sae import SaeConfig, SparseCoder, build_sae
from ..sae.folder import save_sae
from ..sinks import SinkConfig, special_ids
from ..storage import fingerprint, refuse_overwrite, write_json
from .activations import ActivationStream
from .checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from .config import TrainConfig
from .curves import LOG, plot_train_log
from .schedule import lr_factor


class TrainingDiverged(UserError):
    pass


@dataclass
class Member:
    """One SAE being trained, with its optimiser and running statistics."""
    name: str
    sae: SparseCoder
    opt: torch.optim.Optimizer
    since_fired: torch.Tensor                 # [d_sae] tokens since each latent last fired
    lr: float
    stats: dict = field(default_factory=dict)  # exponential moving averages for the progress bar


def parse_sites(patterns: list[str]) -> list[tuple[str, str | None]]:
    """`A` trains an SAE on A; `A->B` trains a transcoder from A to B."""
    out = []
    for p in patterns:
        a, _, b = p.partition("->")
        out.append((a.strip(), b.strip() or None))
    return out


def sae_name(site: str, out_site: str | None, arch: str, k: int | None, coeff: float, lr: float | None = None) -> str:
    base = site.replace(":", "_") + (f"__to__{out_site.replace(':', '_')}" if out_site else "")
    return f"{base}-{arch}-" + (f"k{k}" if k is not None else f"c{coeff:g}") + (f"-lr{lr:g}" if lr else "")


def _precheck_depth(cfg: TrainConfig, sites) -> None:
    """A hookpoint deeper than the model fails before any weights load (when the config is local)."""
    from ..models import EMBEDDED
    try:
        from transformers import AutoConfig

        src = cfg.model
        if src == EMBEDDED:
            from ..storage import cache_dir
            src = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        if not (Path(src) / "config.json").exists():
            return
        n = AutoConfig.from_pretrained(src).num_hidden_layers
    except Exception:  # noqa: BLE001 - the post-load check below still runs
        return
    import re
    for a, b in sites:
        for s in (a, b):
            m = re.search(r"layers\.(\d+)", s or "")
            if m and int(m.group(1)) >= n:
                raise UserError(f"hookpoint {s!r} is deeper than the model: it has {n} layers (0..{n - 1})")


def build_members(cfg: TrainConfig, sites: list[tuple[str, str | None]], widths: dict[str, int]) -> list[Member]:
    """One freshly initialised SAE + optimiser per (site, k or coefficient, lr), seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    members = []
    for a, b in sites:
        for k, coeff, lr in cfg.sweep_values():
            sc = SaeConfig(arch=cfg.arch, d_in=widths[a], d_sae=cfg.latents, hookpoint=a,
                           d_out=widths[b] if b else None, out_hookpoint=b, k=k, sparsity_coeff=coeff,
                           aux_coeff=cfg.aux_coeff)
            sae = build_sae(sc).to(cfg.device)
            sae.reset_parameters(gen)
            opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
            name = sae_name(a, b, cfg.arch, k, coeff, lr if len(cfg.learning_rates) > 1 else None)
            members.append(Member(name, sae, opt, torch.zeros(cfg.latents, dtype=torch.long, device=cfg.device), lr))
    return members


class Trainer:
    is_main = True  # the process that writes shared files (DistributedTrainer: rank 0 only)

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        if not cfg.resume:
            refuse_overwrite(self.out, cfg.overwrite, "--out")
        self.sites = parse_sites(cfg.hookpoints)
        _precheck_depth(cfg, self.sites)
        if not cfg.from_activations:
            check_source(cfg.corpus)
        self.resume_meta = read_checkpoint_meta(self.out) if cfg.resume else None

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.from_activations:  # activation cache on disk instead of the LM (from_cache.py)
            from .from_cache import setup_from_cache
            return setup_from_cache(self)
        self.lm = load_model(cfg.model, device=cfg.device)
        model = self.lm.model
        sites = []
        for a, b in self.sites:
            ra = resolve_hookpoints(model, [a])
            rb = resolve_hookpoints(model, [b]) if b else [None] * len(ra)
            if b and len(ra) != len(rb):
                raise UserError(f"transcoder {a}->{b}: patterns match {len(ra)} and {len(rb)} sites")
            sites += list(zip(ra, rb))
        self.sites = sites
        self.hookpoints = sorted({h for s in sites for h in s if h}, key=lambda h: layer_index(model, h))
        widths = hookpoint_widths(model, self.hookpoints)
        self.rows = load_token_rows(cfg.corpus, self.lm.tokenizer, cfg.context, cfg.heldout_fraction, cfg.text_field,
                                    vocab_size=model.config.vocab_size)
        if cfg.overwrite and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.members = build_members(cfg, sites, widths)
        self.sink = SinkConfig(cfg.sink_first_positions, cfg.mask_special, cfg.sink_norm_factor)
        self.stream = ActivationStream(model, self.rows, self.hookpoints, cfg.context, cfg.batch_tokens,
                                       cfg.buffer_batches, cfg.tokens, cfg.seed, self.sink,
                                       special_ids(self.lm.tokenizer), cfg.device)
        if self.stream.epochs > 1:
            print(f"saelab: the corpus has {len(self.rows.train_rows) * cfg.context:,} training tokens; "
                  f"--tokens {cfg.tokens:,} repeats it {self.stream.epochs:.1f} times", flush=True)
        self.dead_tokens = cfg.dead_tokens or max(cfg.batch_tokens, min(10_000_000, cfg.tokens // 10))

    def _checkpoint(self, meta: dict) -> None:
        """Write the resumable state (distributed.py overrides it: rank 0 writes every SAE)."""
        save_checkpoint(self.out, self.members, meta)

    def _identity(self) -> str:
        """What must match for a checkpoint to be resumable by this configuration."""
        c = self.cfg.to_dict()
        for k in ("resume", "overwrite", "threads", "checkpoint_every", "wandb", "device"):
            c.pop(k)
        return fingerprint(c, [m.name for m in self.members], self.rows.fingerprint)

    # ------------------------------------------------------------ one step
    def _step(self, m: Member, x: torch.Tensor, y: torch.Tensor, lr_factor: float) -> dict:
        sae = m.sae
        target = y * sae.out_scale
        dead = m.since_fired >= self.dead_tokens
        out = sae(x, dead=dead, target=target)
        err = (out.recon - target).pow(2).sum()
        fvu = err / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
        loss = fvu + out.sparsity_loss + out.aux_loss
        if not torch.isfinite(loss) or loss.item() > 1e4:
            raise TrainingDiverged(
                f"{m.name}: loss became {loss.item():.3g}; stopped. The last good checkpoint in {self.out} is kept; "
                f"lower --lr (now {m.lr:.2g}) and rerun with --resume or from scratch")
        for g in m.opt.param_groups:
            g["lr"] = m.lr * lr_factor
        m.opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad()
        m.opt.step()
        sae.normalize_decoder()
        fired = out.latents.fire_counts() > 0
        m.since_fired += x.shape[0]
        m.since_fired[fired] = 0
        l0 = out.latents.values.gt(0).sum().item() / x.shape[0]
        return {"fvu": fvu.item(), "l0": l0, "dead": dead.float().mean().item(), "aux": out.aux_loss.item()}

    # ------------------------------------------------------------ loop
    def run(self) -> list[Path]:
        cfg = self.cfg
        if cfg.loss != "local":  # e2e / e2e+ds train on token rows, not shuffled activations
            from .e2e import run_e2e
            return run_e2e(self)
        logger = _wandb(cfg)
        self.setup()
        start_chunk, lm_seen, steps, t_prev = 0, 0, 0, 0.0
        if self.resume_meta:
            meta = self.resume_meta
            if meta["identity"] != self._identity():
                raise UserError(f"--resume: the checkpoint in {self.out} was written by a different configuration "
                                f"(model, data, SAEs or hyperparameters changed); start a new --out instead")
            load_checkpoint(self.out, self.members)
            start_chunk, lm_seen, steps, t_prev = meta["next_chunk"], meta["lm_tokens"], meta["steps"], meta["wall_s"]
            print(f"saelab: resuming at {lm_seen:,} tokens (chunk {start_chunk})", flush=True)
        total_lm = self.stream.n_chunks * self.stream.rows_per_chunk * cfg.context
        t0 = time.time() - t_prev
        excluded = 0
        next_ckpt = (lm_seen // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        bar = tqdm(total=total_lm, initial=lm_seen, unit="tok", unit_scale=True, desc="train", smoothing=0.05,
                   dynamic_ncols=True)
        t_bar = time.time()
        for chunk in self.stream.chunks(start_chunk):
            if chunk.index == 0:
                for m in self.members:  # scales and decoder bias from the first chunk's data
                    x, y = chunk.acts[m.sae.cfg.hookpoint], chunk.acts[m.sae.cfg.out_hookpoint or m.sae.cfg.hookpoint]
                    m.sae.init_from_data(x[:16384], y[:16384], cfg.bias_init)
            n = chunk.acts[self.hookpoints[0]].shape[0]
            n_batches = max(1, math.ceil(n / cfg.batch_tokens))
            for b in range(n_batches):
                progress = (lm_seen + chunk.lm_tokens * b / n_batches) / total_lm
                factor = lr_factor(progress, cfg.warmup_fraction, cfg.decay_fraction)
                sl = slice(b * cfg.batch_tokens, (b + 1) * cfg.batch_tokens)
                for m in self.members:
                    c = m.sae.cfg
                    s = self._step(m, chunk.acts[c.hookpoint][sl], chunk.acts[c.out_hookpoint or c.hookpoint][sl], factor)
                    for key, v in s.items():
                        m.stats[key] = v if key not in m.stats else 0.9 * m.stats[key] + 0.1 * v
                steps += 1
            lm_seen += chunk.lm_tokens
            excluded += chunk.excluded
            bar.update(chunk.lm_tokens)
            head = self.members[0].stats
            bar.set_postfix_str(f"fvu {head['fvu']:.3f} l0 {head['l0']:.1f} dead {100 * head['dead']:.1f}% "
                                f"excl {100 * chunk.excluded / chunk.lm_tokens:.2f}%"
                                + (f" (+{len(self.members) - 1} SAEs)" if len(self.members) > 1 else ""))
            self.append_log(lm_seen, steps, time.time() - t0)
            if logger:
                logger.log({f"{m.name}/{k}": v for m in self.members for k, v in m.stats.items()} | {"tokens": lm_seen})
            last = chunk.index == self.stream.n_chunks - 1
            if lm_seen >= next_ckpt and not last:
                self._checkpoint({"identity": self._identity(), "next_chunk": chunk.index + 1,
                                  "lm_tokens": lm_seen, "steps": steps, "wall_s": time.time() - t0})
                next_ckpt = (lm_seen // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                _maybe_die_for_test()
        bar.close()
        for m in self.members:  # e.g. BatchTopK's inference threshold, from the last chunk's inputs
            m.sae.finalize(chunk.acts[m.sae.cfg.hookpoint][:16384])
        wall = time.time() - t0
        return self._save(lm_seen, steps, wall, excluded, time.time() - t_bar)

    def append_log(self, lm_seen: int, steps: int, wall_s: float) -> None:
        """One JSON line of every SAE's smoothed training stats (train_log.jsonl: the curves)."""
        record = {"tokens": lm_seen, "steps": steps, "wall_s": round(wall_s, 2),
                  "saes": {m.name: {k: round(v, 5) for k, v in m.stats.items()} for m in self.members}}
        if self.is_main:
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------ save
    def _save(self, lm_seen: int, steps: int, wall: float, excluded: int, loop_s: float) -> list[Path]:
        cfg = self.cfg
        folders = []
        for m in self.members:
            extra = {"loss": cfg.loss, **getattr(self, "loss_extra", {}), "model_spec": cfg.model, "lr": m.lr, "training_tokens": lm_seen, "steps": steps, "seed": cfg.seed,
                     "sink": vars(self.sink), "corpus": cfg.corpus, "data_fingerprint": self.rows.fingerprint,
                     "train_stats": m.stats}
            folders.append(save_sae(m.sae, self.out / m.name, self.lm.name, cfg.context, extra))
        manifest = {
            "command": "train", "config": cfg.to_dict(), "saelab_version": __version__,
            "versions": _versions(), "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
            "data": {"source": cfg.corpus, "fingerprint": self.rows.fingerprint, "rows": int(len(self.rows.tokens)),
                     "train_rows": int(len(self.rows.train_rows)), "heldout_rows": int(len(self.rows.heldout_rows)),
                     "epochs": self.stream.epochs},
            "seed": cfg.seed, "wall_s": wall, "lm_tokens": lm_seen, "steps": steps,
            "tokens_per_s": lm_seen / max(loop_s, 1e-9), "excluded_positions": excluded,
            "peak_rss_mb": _peak_rss_mb(), "saes": {m.name: {"folder": str(f), "final": m.stats}
                                                    for m, f in zip(self.members, folders)},
        }
        write_json(self.out / "manifest.json", manifest)
        plot_train_log(self.out)
        ckpt = self.out / "checkpoint.safetensors"
        if ckpt.exists():
            ckpt.unlink()
        return folders


def _maybe_die_for_test() -> None:
    """Tests set SAELAB_KILL_AFTER_CHECKPOINT to SIGKILL the run right after a checkpoint."""
    import os
    import signal

    if os.environ.get("SAELAB_KILL_AFTER_CHECKPOINT"):
        os.kill(os.getpid(), signal.SIGKILL)


def _versions() -> dict:
    import numpy
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wandb(cfg: TrainConfig):
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError as e:
        raise UserError("--wandb needs `pip install wandb`") from e
    return wandb.init(project=cfg.wandb, config=cfg.to_dict())
