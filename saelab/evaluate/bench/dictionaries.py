"""What the bench compares: SAE folders and the baselines, behind one interface.

A `Dictionary` reads one site and turns its activations [n, d_site] into codes [n, d_lat] (dense
tensors; zeros where a latent is silent), and, when it has them, unit `directions` [d_lat, d_model]
in the space of the SAEs' site (what each latent writes; absorption compares them with a probe).

Baselines, built for the site of the SAEs being benched:
  neurons   the MLP hidden units of the same block (the family's neuron site, e.g. `<block>.mlp.down_proj:input`),
            every value kept; direction j = what neuron j adds to the residual stream (a column of the projection)
  residual  the site's own basis (codes = the activation, directions = identity)
  pca       the site's principal components (all d_in of them: with d_sae > d_in that is the top
            min(d_sae, d_in)), fitted on training rows; codes = projections of the centred activation
  random    an untrained dictionary of the first SAE's architecture and shape (same d_sae and k),
            random unit decoder rows with the tied encoder, b_dec at the site mean (seed 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ...errors import UserError
from ...families import family_of
from ...models import hookpoint_widths, input_unit_directions, layer_index, module_at
from ...sae.registry import build_sae

BASELINES = ("neurons", "residual", "pca", "random")
SPARSE_KINDS = ("sae", "random")  # codes with exact zeros: absorption's "silent" is defined for these


@dataclass
class Dictionary:
    name: str
    kind: str  # sae | neurons | residual | pca | random
    site: str  # hookpoint it reads
    d_lat: int
    encode: Callable[[torch.Tensor], torch.Tensor]
    directions: torch.Tensor | None = None  # [d_lat, d_model] unit rows, in the SAE site's space
    l0: float | None = None  # filled by the core metric (SAEs) or measured codes
    source: str = ""

    @property
    def sparse(self) -> bool:
        return self.kind in SPARSE_KINDS


def _unit(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)


def sae_dictionary(folder, name: str | None = None) -> Dictionary:
    """A loaded SaeFolder as a dictionary (codes: `encode_raw`, densified), named `name` (default: the
    folder's name; the bench passes names made unique across its folders)."""
    sae = folder.sae
    return Dictionary(
        name or folder.name,
        "sae",
        sae.cfg.hookpoint,
        sae.cfg.d_sae,
        lambda x: sae.encode_raw(x.float()).to_dense(),
        _unit(sae.W_dec.detach().float()),
        source=str(folder.path),
    )


def neuron_site(model, site: str) -> str:
    """The MLP hidden units of the block a site belongs to, as the model's family names them
    (`model.layers.L.mlp.down_proj:input`, GPT-2's `transformer.h.L.mlp.c_proj:input`, ...); a UserError
    when the site is not inside a block or the model has no such module."""
    layer = layer_index(model, site)
    if layer < 0:
        raise UserError(f"--baselines neurons: {site} is not inside a transformer block")
    hp = family_of(model).neuron_site(layer)
    try:
        module_at(model, hp)
    except AttributeError:
        raise UserError(f"--baselines neurons: this model has no {hp.removesuffix(':input')} module") from None
    return hp


def neuron_dictionary(model, site: str, d_model: int) -> Dictionary:
    hp = neuron_site(model, site)
    width = hookpoint_widths(model, [hp])[hp]
    dirs = input_unit_directions(module_at(model, hp), width)  # Linear or GPT-2's Conv1D
    # what a neuron writes lands in the residual stream; directions make sense only in a space of that width
    dirs = _unit(dirs) if dirs is not None and dirs.shape[1] == d_model else None
    return Dictionary(
        f"neurons (L{layer_index(model, site)} MLP)", "neurons", hp, width, lambda x: x.float(), dirs, source=hp
    )


def residual_dictionary(site: str, d: int) -> Dictionary:
    return Dictionary("residual basis", "residual", site, d, lambda x: x.float(), torch.eye(d), source=site)


def pca_dictionary(site: str, x: torch.Tensor, n_components: int) -> Dictionary:
    """Principal components of training activations x [n, d] (top n_components by variance)."""
    x = x.float()
    mean = x.mean(0)
    # eigh of the covariance: d x d, cheap for d <= a few thousand; eigenvalues ascending
    evals, evecs = torch.linalg.eigh(((x - mean).t() @ (x - mean)) / max(len(x) - 1, 1))
    comps = evecs[:, evals.argsort(descending=True)[:n_components]].t().contiguous()  # [c, d]
    return Dictionary("PCA", "pca", site, comps.shape[0], lambda v: (v.float() - mean) @ comps.t(), comps, source=site)


def random_dictionary(template, site_mean: torch.Tensor, seed: int = 0) -> Dictionary:
    """An untrained dictionary shaped like `template` (a SparseCoder): same architecture, d_sae and k."""
    cfg = replace(template.cfg, out_hookpoint=None, d_out=None, skip=False)
    sae = build_sae(cfg)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_dec.copy_(site_mean.float())
    sae.eval()
    k = f", k={cfg.k}" if cfg.k else ""
    return Dictionary(
        f"random ({cfg.arch} {cfg.d_sae}{k})",
        "random",
        cfg.hookpoint,
        cfg.d_sae,
        lambda x: sae.encode_raw(x.float()).to_dense(),
        _unit(sae.W_dec.detach().float()),
        source="random",
    )


def check_baselines(names: list[str]) -> list[str]:
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise UserError(f"unknown baseline(s) {', '.join(bad)}; choose from {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))
