"""`--init-from SAE_DIR`: a run that starts from an existing dictionary instead of a fresh one.

The dictionary (saelab, SAELens or sparsify folder, through `sae.folder.open_sae`) fixes what it
is: arch, latents, k or sparsity coefficient, hookpoint(s), skip, and the options its type says a
saved dictionary fixes (`Options.recorded`: Matryoshka's groups). `adopt_dictionary` returns a new
config with these (the user's is never rewritten; train/plan.py checks the result once) before
anything loads; an option the user set to something else (a value that is neither the default nor
the dictionary's) is refused, so `--k 64` never silently trains the dictionary's k = 32. A sweep
(several k / coefficients / hookpoints) is refused: one dictionary is one SAE. The model must be
the one a saelab folder records (an imported folder names a hub model we may not have, so only its
widths are checked).

Weights are copied, never re-initialised from data. What is restored is the training
parametrisation: saved folders hold raw-space weights (scales folded in, base.folded_state), and
training runs on inputs scaled by s with unit-norm decoder rows. For a unit-norm architecture the
scale is the one the decoder rows record (|W_dec row| = 1/s in a saelab folder), so the first
renormalisation does not change the function; a free decoder (ReLU, or a foreign dictionary with
unequal row norms, which then keeps its rows free) takes s from the first batch as a scratch run
does. Every rescaling is function-preserving: before step 1 the run's dictionary gives the
source's outputs (to float32 rounding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import UserError
from ..models import candidate_hookpoints, model_skeleton
from ..option_checks import flag as option_flag
from ..options import field_default
from ..sae import ARCHITECTURES, SparseCoder, build_sae, uses_k
from ..sae.folder import SaeFolder, open_sae
from ..sae.foreign import detect_format, resolve_source, sae_folders
from .members import Member, new_member, sae_name
from .sources import local_model_config

_EQUAL_NORMS = 1e-5  # relative spread of decoder row norms still counted as one scale (float32 rounding)


@dataclass
class InitSource:
    """The dictionary a run starts from, and what its new folder records about it."""

    folder: SaeFolder
    fmt: str  # saelab | saelens | sparsify

    @property
    def record(self) -> dict:
        p = self.folder.provenance
        c = self.folder.sae.cfg
        return {
            "path": str(self.folder.path.resolve()),
            "format": self.fmt,
            "arch": c.arch,
            "d_sae": c.d_sae,
            "k": c.k,
            "sparsity_coeff": c.sparsity_coeff,
            "hookpoint": c.hookpoint,
            "out_hookpoint": c.out_hookpoint,
            "model_spec": p.model_spec,
            "corpus": p.corpus,
            "training_tokens": p.training_tokens,
            "objective": p.objective,
        }


def open_init_source(spec: str) -> InitSource:
    root = resolve_source(spec)
    folders = sae_folders(root)
    if len(folders) > 1:
        names = ", ".join(f.name for f in folders[:6]) + (", ..." if len(folders) > 6 else "")
        raise UserError(
            f"--init-from {spec}: holds {len(folders)} SAE folders ({names}); a run starts from one "
            f"dictionary: pass one of them"
        )
    return InitSource(open_sae(folders[0]), detect_format(folders[0]))


def _default(cfg, name: str):
    return field_default(next(f for f in dataclasses.fields(cfg) if f.name == name))


def _adopt(cfg, name: str, value, src: Path) -> tuple[str, object]:
    """(name, the dictionary's value), unless the user chose another value for it (refused)."""
    mine = getattr(cfg, name)
    if mine != value and mine != _default(cfg, name):
        flag = option_flag(name)
        shown = " ".join(map(str, mine)) if isinstance(mine, list) else mine
        raise UserError(
            f"{flag} {shown} contradicts the dictionary in {src} ({name} = {value}); --init-from "
            f"trains that dictionary as it is: drop {flag}"
        )
    return name, value


def adopt_dictionary(cfg) -> tuple[InitSource, object]:
    """Open cfg.init_from -> (its InitSource, a copy of cfg with the dictionary's options), before any
    model loads. `cfg` itself is left as the user gave it."""
    src = open_init_source(cfg.init_from)
    c, path = src.folder.sae.cfg, src.folder.path
    why = ARCHITECTURES[c.arch].init_from_refused
    if why:
        raise UserError(f"--init-from {path}: a {c.arch} dictionary cannot be a run's start: {why}")
    k_arch = uses_k(c.arch)
    several = [
        (n, v)
        for n, v in (("--k", cfg.k), ("--sparsity-coeff", cfg.sparsity_coeff), ("--hookpoints", cfg.hookpoints))
        if v is not None and len(v) > 1
    ]
    if several:
        n, v = several[0]
        raise UserError(
            f"{n} {' '.join(map(str, v))}: --init-from starts one SAE from one dictionary; a sweep of "
            f"several values cannot (the dictionary has {n.lstrip('-')} = "
            f"{c.k if n == '--k' else c.sparsity_coeff if n == '--sparsity-coeff' else c.hookpoint})"
        )
    fixed = [
        ("arch", c.arch),
        ("latents", c.d_sae),
        ("k", [c.k]) if k_arch else ("sparsity_coeff", [c.sparsity_coeff]),
        ("hookpoints", [c.hookpoint + (f"->{c.out_hookpoint}" if c.out_hookpoint else "")]),
        ("skip", c.skip),
    ]
    fixed += list(ARCHITECTURES[c.arch].Options.recorded(c).items())  # e.g. Matryoshka's groups
    if src.fmt == "saelab":
        fixed.append(("model", src.folder.provenance.model_spec))
    adopted = replace(cfg, **dict(_adopt(cfg, name, value, path) for name, value in fixed))
    _check_width_before_load(adopted.model, c, path)
    return src, adopted


def _check_width_before_load(model_spec: str, c, path: Path) -> None:
    """Block outputs (the residual stream) have the model's hidden size: checked from its config.json,
    on the model's weightless skeleton, so the site is named as the model names its blocks."""
    conf = local_model_config(model_spec)
    hidden = getattr(conf, "hidden_size", None) if conf is not None else None
    skeleton = model_skeleton(conf) if hidden else None
    if skeleton is None:
        return
    kinds = dict(candidate_hookpoints(skeleton))
    for site, width in ((c.hookpoint, c.d_in), (c.out_hookpoint, c.d_out)):
        if site and kinds.get(site) == "resid_post" and width != hidden:
            raise UserError(
                f"--init-from {path}: the dictionary's width at {site} is {width}, but model "
                f"{model_spec!r} has hidden size {hidden} there"
            )


def check_widths(src: InitSource, widths: dict[str, int]) -> None:
    """After the model loads: every site's width (module outputs, inputs) against the dictionary's."""
    c = src.folder.sae.cfg
    for site, width in ((c.hookpoint, c.d_in), (c.out_hookpoint, c.d_out)):
        if site and widths.get(site) != width:
            raise UserError(
                f"--init-from {src.folder.path}: the dictionary's width at {site} is {width}, the "
                f"model's is {widths.get(site)}"
            )


def members_from_dictionary(cfg, src: InitSource, sites, widths: dict[str, int]) -> list[Member]:
    """One member per learning rate, each a copy of the source dictionary in training parametrisation."""
    check_widths(src, widths)
    ((a, b),) = sites
    members = []
    for k, coeff, lr in cfg.sweep_values():
        sc = replace(src.folder.sae.cfg, aux_coeff=cfg.aux_coeff, **cfg.type_options().sae_fields(fresh=False))
        sae = copy_dictionary(src.folder.sae, build_sae(sc)).to(cfg.device)
        name = sae_name(
            a, b, cfg.arch + ("-skip" if cfg.skip else ""), k, coeff, lr if len(cfg.learning_rates) > 1 else None
        )
        members.append(new_member(name, sae, lr, cfg.device))
    return members


@torch.no_grad()
def copy_dictionary(source: SparseCoder, sae: SparseCoder) -> SparseCoder:
    """Load `source`'s raw-space weights into `sae` at the scale its decoder rows record."""
    sae.load_folded({k: v.detach().float().cpu() for k, v in source.folded_state().items()})
    norms = sae.W_dec.norm(dim=1)
    if sae.uses_unit_norm_decoder and norms.min() > 0 and (norms.max() - norms.min()) <= _EQUAL_NORMS * norms.max():
        _rescale(sae, 1.0 / norms.mean().item())  # rows now unit to rounding: renormalising changes nothing
        sae.scale_from_data = False
    else:
        sae.uses_unit_norm_decoder = False  # unequal rows: renormalising would change the function
        sae.scale_from_data = True
    return sae


@torch.no_grad()
def _rescale(sae: SparseCoder, r: float) -> None:
    """Multiply the training scale (inputs and targets) by r, keeping the raw-space function (see folded_state)."""
    sae.W_enc /= r
    sae.W_dec *= r
    sae.b_dec *= r
    sae.in_scale *= r
    sae.out_scale *= r


@torch.no_grad()
def first_batch(sae: SparseCoder, x: torch.Tensor) -> None:
    """Called instead of `init_from_data` on the first batch: a free decoder takes the data's scale
    (E|x s|^2 = d_in, as a scratch run), the function unchanged; nothing else moves."""
    if getattr(sae, "scale_from_data", False):
        s = (sae.cfg.d_in / x.pow(2).sum(-1).mean()).sqrt().item()
        _rescale(sae, s / sae.in_scale.item())
        sae.scale_from_data = False
