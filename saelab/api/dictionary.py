"""`saelab.load(...) -> Dictionary`: any dictionary on disk (or a public release) as one typed object.

`load` finds the folder and hands it to the loader that owns the format: `sae.folder.open_sae` for a
saelab, SAELens or sparsify folder (foreign.py converts the foreign ones), `sae.circuit_tracer_io` for a
circuit-tracer folder (converted in memory as `saelab import` converts it), `sae.releases` for a release
of releases.json read straight from the hub, `sae.foreign.resolve_source` for a hub id. A run folder
(a training run, a sweep, a replacement folder) holding one dictionary loads it; holding several, the
error lists them and `sae_id` picks one. Nothing is loaded twice and nothing here is a second loader.

A `Dictionary` works on RAW activations of its model (every scaling is folded into the weights at save):
`encode` -> dense latents, `decode` -> the reconstruction (a transcoder's prediction), `forward` -> both
and the error. `.module` is the underlying `SparseCoder` for code that needs the rest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..families import family_for_name
from ..input_kind import what_it_holds
from ..sae.base import SaeConfig, SparseCoder
from ..sae.circuit_tracer_io import ct_dictionaries
from ..sae.folder import Provenance, SaeFolder, open_sae, refuse_non_finite
from ..sae.foreign import resolve_source, sae_folders
from ..sae.foreign_circuit_tracer import CT_CONFIG, NORMALIZED, read_ct
from ..sae.latents import from_dense
from ..sae.layout import CFG, cfg_json

CT_CONTEXT = 1024  # circuit-tracer records no context length: what `saelab import` records for its folders


@dataclass(frozen=True)
class Reconstruction:
    """What `Dictionary.forward` returns; every tensor has the input's leading shape `[...]`.

    recon: `[..., d_out]` the reconstruction (an SAE) or prediction of the target site (a transcoder),
        in the units of the model's activations at that site.
    latents: `[..., d_sae]` dense latent activations (zeros where a latent is off).
    error: `[..., d_out]` target - recon (target = the input for an SAE; for a transcoder the `target`
        given to `forward`, else None).
    """

    recon: torch.Tensor
    latents: torch.Tensor
    error: torch.Tensor | None


class Dictionary:
    """One sparse dictionary (SAE, transcoder, crosscoder, CLT) with how it was made.

    Made by `saelab.load`. It reads `hookpoint` (a module name of its model, `:input` = the module's input;
    a crosscoder or CLT: several sites joined by `+`, their activations concatenated on the last axis) and
    writes `out_hookpoint` (a transcoder) or reconstructs its input (an SAE).
    """

    def __init__(self, folder: SaeFolder, name: str | None = None):
        self._folder = folder
        self.name: str = name or folder.path.name
        """A short name: the folder's (or the sae_id that picked it); keys `RunOutput.features`."""

    # ------------------------------------------------------------ what it is
    @property
    def module(self) -> SparseCoder:
        """The underlying torch module (`saelab.sae.SparseCoder`); private API, may change."""
        return self._folder.sae

    @property
    def config(self) -> SaeConfig:
        """Its `SaeConfig`: arch, d_in, d_sae, d_out, hookpoint, out_hookpoint, k and the type's options."""
        return self._folder.sae.cfg

    @property
    def provenance(self) -> Provenance:
        """How it was made: `model_spec` (what `Model.load` takes), `model_name`, `corpus`, `context`
        (tokens per row), `training_tokens` (None if imported), `objective` ({"loss": ...}), `sink`."""
        return self._folder.provenance

    @property
    def cfg_json(self) -> dict[str, Any]:
        """Its cfg.json as a dict (the SAELens keys; saelab's own under `saelab`)."""
        return self._folder.cfg

    @property
    def path(self) -> Path:
        """The folder it was loaded from."""
        return self._folder.path

    @property
    def hookpoint(self) -> str:
        """The site it reads (a crosscoder / CLT: its sites joined by `+`)."""
        return self.config.hookpoint

    @property
    def out_hookpoint(self) -> str | None:
        """The site a transcoder predicts (None for an SAE, which reconstructs `hookpoint`)."""
        return self.config.out_hookpoint

    @property
    def is_transcoder(self) -> bool:
        """True when it predicts another site than it reads."""
        return self.config.is_transcoder

    @property
    def d_in(self) -> int:
        """Width of its input (a multi-site dictionary: the sites' widths summed)."""
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.config.d_sae

    @property
    def d_out(self) -> int:
        """Width of its output (= d_in for an SAE)."""
        return int(self.config.d_out)

    @property
    def device(self) -> torch.device:
        """Where its weights are."""
        return self._weight.device

    @property
    def _weight(self) -> torch.Tensor:
        return next(self.module.parameters())  # (a CLT's W_enc is a list of per-layer tensors)

    def __repr__(self) -> str:
        c = self.config
        site = c.hookpoint + (f" -> {c.out_hookpoint}" if c.out_hookpoint else "")
        return f"Dictionary({self.name!r}, {c.arch}, {c.d_in} -> {c.d_sae} latents, {site})"

    # ------------------------------------------------------------ maths on raw activations
    def _rows(self, acts: torch.Tensor) -> torch.Tensor:
        if not isinstance(acts, torch.Tensor) or acts.dim() < 1 or acts.shape[-1] != self.d_in:
            got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise UserError(f"{self.name}: expected activations [..., {self.d_in}], got {got}")
        return acts.reshape(-1, self.d_in).to(device=self.device, dtype=self._weight.dtype)

    @torch.no_grad()
    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """acts `[..., d_in]` (raw activations at `hookpoint`) -> dense latents `[..., d_sae]` (float32)."""
        dense = self.module.encode_raw(self._rows(acts)).to_dense()
        return dense.reshape(*acts.shape[:-1], self.d_sae)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, acts: torch.Tensor | None = None) -> torch.Tensor:
        """Dense latents `[..., d_sae]` -> the reconstruction / prediction `[..., d_out]` in raw units.

        A skip transcoder also adds its linear skip of the input: pass `acts` `[..., d_in]` for it."""
        if latents.shape[-1] != self.d_sae:
            raise UserError(f"{self.name}: expected latents [..., {self.d_sae}], got {tuple(latents.shape)}")
        sae = self.module
        if self.config.skip and acts is None:
            raise UserError(f"{self.name} is a skip transcoder: decode(latents, acts) needs its input too")
        flat = latents.reshape(-1, self.d_sae).to(device=self.device, dtype=self._weight.dtype)
        out = sae.decode(from_dense(flat)) / sae.out_scale
        if acts is not None:
            out = out + sae.skip_raw(self._rows(acts))
        return out.reshape(*latents.shape[:-1], self.d_out)

    @torch.no_grad()
    def forward(self, acts: torch.Tensor, target: torch.Tensor | None = None) -> Reconstruction:
        """acts `[..., d_in]` -> Reconstruction(recon `[..., d_out]`, latents `[..., d_sae]`, error).

        error = target - recon, where target is `acts` for an SAE and the given `target` `[..., d_out]`
        (the activations at `out_hookpoint`) for a transcoder (None if not given)."""
        latents = self.encode(acts)
        recon = self.decode(latents, acts if self.config.skip else None)
        if target is None and not self.is_transcoder:
            target = acts
        error = None if target is None else target.to(recon) - recon
        return Reconstruction(recon, latents, error)

    __call__ = forward

    def to(self, device: str | torch.device) -> Dictionary:
        """Move the weights to `device` (in place); returns self."""
        self.module.to(device)
        return self


# ---------------------------------------------------------------- load


def load(path_or_release: str | Path, sae_id: str | None = None, device: str = "cpu") -> Dictionary:
    """Load a dictionary: a folder, a run folder, a public release, or a hub id.

    - an SAE folder written by saelab (training, `import`, `pull`), SAELens or sparsify (`cfg.json` inside);
    - a circuit-tracer folder (`config.yaml`): `sae_id` "layer_3" (a transcoder set) or "clt";
    - a folder holding several (a training run, a sweep, a replacement folder, sparsify's per-hookpoint
      layout): the one there is, else `sae_id` names the sub-folder (the error lists them);
    - a release name of `saelab pull --list`'s registry (e.g. "gemma-scope-2b-pt-res") with its `sae_id`:
      downloaded from the hub into its cache and converted in memory (`saelab pull` writes it as a folder);
    - a hub id `owner/repo[/sub/folder]` of a SAELens or sparsify folder.
    `device`: where the weights go ("cpu", "cuda", ...)."""
    spec = str(path_or_release)
    p = Path(spec)
    if p.exists():
        return _load_path(p, sae_id, device)
    from ..sae.releases import registry

    releases = registry()
    if spec in releases:
        return _load_release(releases[spec], sae_id, device)
    if "/" in spec and not spec.startswith((".", "/", "~")) and not Path(spec.split("/")[0]).is_dir():
        return _load_path(resolve_source(spec), sae_id, device)  # owner/repo[/sub]: the hub
    close = difflib.get_close_matches(spec, list(releases), n=3, cutoff=0.5)
    hint = f"; releases with a close name: {', '.join(close)}" if close else ""
    raise UserError(f"{spec} does not exist and is not a release name (`saelab pull --list`) nor a hub id{hint}")


def _load_path(p: Path, sae_id: str | None, device: str) -> Dictionary:
    if not p.is_dir():
        raise UserError(f"{p} is a file; give the folder holding {CFG}")
    if (p / CFG).exists():
        if sae_id is not None:
            raise UserError(f"{p} is one dictionary; sae_id {sae_id!r} is for a folder holding several")
        return Dictionary(open_sae(p, device))
    if (p / CT_CONFIG).exists():
        return _load_circuit_tracer(p, sae_id, device)
    found = {f.relative_to(p).as_posix(): f for f in _dictionary_folders(p)}
    name = _pick(p, list(found), sae_id)
    return Dictionary(open_sae(found[name], device), name)


def _pick(where: Path, names: list[str], sae_id: str | None) -> str:
    """The one name, or `sae_id` among several; the error lists them."""
    if sae_id is None:
        if len(names) == 1:
            return names[0]
        raise UserError(f"{where} holds {len(names)} dictionaries; pick one with sae_id=: {', '.join(names)}")
    if sae_id not in names:
        close = difflib.get_close_matches(sae_id, names, n=3, cutoff=0.4)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UserError(f"{where} has no dictionary {sae_id!r}{hint}; it holds: {', '.join(names)}")
    return sae_id


def _load_circuit_tracer(p: Path, sae_id: str | None, device: str) -> Dictionary:
    """One transcoder of a circuit-tracer folder (`layer_{l}` of a transcoder set, or `clt`), converted in
    memory as `saelab import` converts it (sae/circuit_tracer_io.py), on the sites of its model's family."""
    ct = read_ct(p)
    if not ct.model_name:
        raise UserError(f"{p / CT_CONFIG} names no model_name: `saelab import {p} --model M --out DIR` instead")
    if ct.input_hook == NORMALIZED:
        raise UserError(
            f"{p} reads {NORMALIZED} (the MLP norm's output before its weight): `saelab import {p} --model "
            f"{ct.model_name} --out DIR` folds the norm into the encoders; then saelab.load(DIR, sae_id=...)"
        )
    ct, saes, names = ct_dictionaries(ct, family_for_name(ct.model_name), None)
    name = _pick(p, names, sae_id)
    sae = saes[names.index(name)]
    refuse_non_finite(p / name, sae.state_dict())
    prov = Provenance(model_spec=ct.model_name, model_name=ct.model_name, context=CT_CONTEXT)
    origin = {"format": "circuit-tracer", "path": str(p), "model_kind": ct.kind, "activation": ct.activation}
    cfg = cfg_json(sae, ct.model_name, CT_CONTEXT, prov.to_block() | {"imported_from": origin})
    return Dictionary(SaeFolder(p, sae.to(device).eval(), prov, cfg), name)


def _dictionary_folders(root: Path) -> list[Path]:
    """The SAE folders under `root`: its sub-folders with a cfg.json, or one level deeper (a sweep of runs)."""
    try:
        return sae_folders(root)
    except UserError:
        deeper = [f for sub in sorted(root.iterdir()) if sub.is_dir() for f in _subfolders(sub)]
        if not deeper:
            raise UserError(
                f"{root} {what_it_holds(root)}: no dictionary in it (a folder with {CFG}, or folders of them)"
            ) from None
        return deeper


def _subfolders(sub: Path) -> list[Path]:
    return sorted(f for f in sub.iterdir() if f.is_dir() and (f / CFG).exists())


def _load_release(release, sae_id: str | None, device: str) -> Dictionary:
    """A release of releases.json, downloaded (only its sub-folder) and converted as `saelab pull` does."""
    from ..sae import releases as rel

    if release.format == "circuit-tracer":
        raise UserError(
            f"release {release.name} is a whole replacement model: `saelab pull {release.name} --out DIR`, "
            f"then saelab.load(DIR, sae_id='layer_0')"
        )
    sae_id = sae_id or (release.ids[0] if len(release.ids) == 1 else None)
    if sae_id is None:
        shown = ", ".join(release.ids[:3]) + (", ..." if len(release.ids) > 3 else "")
        form = f"e.g. {shown}" if release.ids else f"ids look like {release.id_pattern}"
        raise UserError(f"release {release.name}: give sae_id= ({form}; `saelab pull {release.name} --list`)")
    sub, hookpoint = release.resolve(sae_id)
    folder = rel.download(release.repo, sub)
    sae, original = rel.load_release_folder(release, folder, hookpoint)
    refuse_non_finite(folder, sae.state_dict())
    prov = Provenance(model_spec=release.model, model_name=release.model, context=release.context)
    origin = {"format": release.format, "release": release.name, "repo": release.repo, "sae_id": sae_id}
    cfg = cfg_json(sae, release.model, release.context, prov.to_block() | {"imported_from": origin | {"cfg": original}})
    return Dictionary(SaeFolder(folder, sae.to(device).eval(), prov, cfg), sae_id)
