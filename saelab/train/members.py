"""The SAEs of one training run: one `Member` per (site, k or sparsity coefficient, lr), each with
its own optimiser, dead-latent counters and smoothed statistics."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..sae import SaeConfig, SparseCoder, build_sae
from ..sae.crosscoder import SEP


@dataclass
class Member:
    """One SAE being trained, with its optimiser and running statistics."""

    name: str
    sae: SparseCoder
    opt: torch.optim.Optimizer
    since_fired: torch.Tensor  # [d_sae] tokens since each latent last fired
    lr: float
    stats: dict = field(default_factory=dict)  # exponential moving averages (progress bar, log, manifest)

    def smooth(self, step_stats: dict) -> None:
        for key, v in step_stats.items():
            self.stats[key] = v if key not in self.stats else 0.9 * self.stats[key] + 0.1 * v


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: 'model.layers.{4,6,8}' -> the three names (nested and repeated braces too)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    if "," not in m.group(1):
        raise UserError(
            f"hookpoint pattern {pattern!r}: braces need comma-separated alternatives, e.g. layers.{{4,6,8}}"
        )
    return [
        x
        for alt in m.group(1).split(",")
        for x in expand_braces(pattern[: m.start()] + alt.strip() + pattern[m.end() :])
    ]


def parse_sites(patterns: list[str]) -> list[tuple[str, str | None]]:
    """`A` trains an SAE on A; `A->B` trains a transcoder from A to B; braces expand to several."""
    out = []
    for p in patterns:
        a, _, b = p.partition("->")
        ea, eb = expand_braces(a.strip()), expand_braces(b.strip()) if b.strip() else []
        if eb and len(ea) != len(eb):
            raise UserError(f"transcoder {p!r}: the braces give {len(ea)} inputs and {len(eb)} outputs")
        out += list(zip(ea, eb)) if eb else [(x, None) for x in ea]
    return out


def sae_name(site: str, out_site: str | None, arch: str, k: int | None, coeff: float, lr: float | None = None) -> str:
    if out_site and SEP in out_site:  # a multi-site transcoder (clt): its first sites and how many layers
        n = len(out_site.split(SEP))
        site, out_site = site.split(SEP)[0], f"{out_site.split(SEP)[0]}-x{n}"
    base = site.replace(":", "_") + (f"__to__{out_site.replace(':', '_')}" if out_site else "")
    return f"{base}-{arch}-" + (f"k{k}" if k is not None else f"c{coeff:g}") + (f"-lr{lr:g}" if lr else "")


def build_members(cfg, sites: list[tuple[str, str | None]], widths: dict[str, int]) -> list[Member]:
    """One freshly initialised SAE + optimiser per (site, k or coefficient, lr), seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    members = []
    for a, b in sites:
        for k, coeff, lr in cfg.sweep_values():
            own = cfg.type_options().sae_fields(fresh=True)  # the type's options, as its SaeConfig fields
            sc = SaeConfig(
                arch=cfg.arch,
                d_in=widths[a],
                d_sae=cfg.kind.latents_for(cfg.latents, a),
                hookpoint=a,
                d_out=widths[b] if b else None,
                out_hookpoint=b,
                k=k,
                sparsity_coeff=coeff,
                aux_coeff=cfg.aux_coeff,
                skip=cfg.skip,
                **own,
            )
            sae = build_sae(sc).to(cfg.device)
            sae.reset_parameters(gen)
            name = sae_name(
                a, b, cfg.arch + ("-skip" if cfg.skip else ""), k, coeff, lr if len(cfg.learning_rates) > 1 else None
            )
            members.append(new_member(name, sae, lr, cfg.device))
    return members


def new_member(name: str, sae: SparseCoder, lr: float, device: str = "cpu", stats: dict | None = None) -> Member:
    opt = torch.optim.Adam(sae.optimizer_groups(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    since = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    return Member(name, sae, opt, since, lr, dict(stats or {}))
