"""`saelab pull RELEASE --sae-id ID --out DIR`: public SAE releases (releases.json) -> saelab folders.

Each release names its hub repo, the model, a format and how sae-ids map to repo folders and to our
hookpoints. A format is a loader that reads one downloaded folder and returns an SAE on raw
activations (norm scalings folded in, input centred by b_dec as every saelab SAE is):

  gemma-scope  `params.npz`: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold
               (JumpReLU; pre-activation x @ W_enc + b_enc, no b_dec subtraction)
  llama-scope  `hyperparams.json` + `checkpoints/final.safetensors`: encoder.weight [d_sae, d_in],
               encoder.bias, decoder.weight [d_in, d_sae], decoder.bias; JumpReLU with one scalar
               `jump_relu_threshold`; `norm_activation: dataset-wise` scales the input by
               sqrt(d_model) / dataset_average_activation_norm.in and the output back by .out
  saelens      `cfg.json` + `sae_weights.safetensors` (foreign_saelens.py reads it)
  sparsify     `cfg.json` + `sae.safetensors` (foreign_sparsify.py reads it)
  circuit-tracer  a whole transcoder set (PLT or CLT) in circuit-tracer's layout, or Gemma Scope's npz files
               that circuit-tracer lists (`transcoders`); pulled as a replacement folder
               (circuit_tracer_releases.py)

The download (huggingface_hub, only the SAE's folder) is real code that tests replace by a local
folder laid out like the repo (`root=`).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..option_checks import check_types
from ..options import model_option, opt, out_option, overwrite_option
from ..out_folder import SAE_FOLDER, open_out
from ..storage import read_json, read_tensors
from . import SaeConfig, SparseCoder, build_sae
from .folder import Provenance, refuse_non_finite, save_sae
from .foreign import detect_format, load_foreign
from .foreign_saelens import saelens_readers

FORMATS = ("gemma-scope", "llama-scope", "saelens", "sparsify", "circuit-tracer")


@dataclass(frozen=True)
class Release:
    name: str
    repo: str
    model: str
    format: str
    context: int
    ids: list[str]
    id_pattern: str | None
    path: str
    hookpoint: str  # circuit-tracer: "INPUT_HOOK->OUTPUT_HOOK" in circuit-tracer's names
    transcoders: tuple[str, ...] | None = None  # circuit-tracer: one file per layer (Gemma Scope npz)

    def resolve(self, sae_id: str) -> tuple[str, str]:
        """sae-id -> (folder in the repo, our hookpoint); an unknown id fails with close matches."""
        layer = None
        if sae_id in self.ids:
            layer = self._layer(sae_id)
        elif self.id_pattern and (m := re.fullmatch(self.id_pattern, sae_id)):
            layer = m.group("layer")
        if layer is None:
            close = difflib.get_close_matches(sae_id, self.ids, n=5, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            form = f" (ids look like {self.id_pattern})" if self.id_pattern else ""
            raise UserError(
                f"release {self.name} has no sae-id {sae_id!r}{hint}{form}; `saelab pull {self.name} --list` shows them"
            )
        return self.path.format(sae_id=sae_id), self.hookpoint.format(layer=int(layer))

    def _layer(self, sae_id: str) -> str:
        """A listed id: its layer from the pattern, else its position (template ids are one per block)."""
        m = re.fullmatch(self.id_pattern, sae_id) if self.id_pattern else None
        return m.group("layer") if m else str(self.ids.index(sae_id))


def registry(path: Path | None = None) -> dict[str, Release]:
    """The release registry (the packaged releases.json, or `path`), checked entry by entry."""
    raw = (
        json.loads(Path(path).read_text())
        if path
        else json.loads(resources.files("saelab.sae").joinpath("releases.json").read_text())
    )
    out = {}
    for name, e in raw.items():
        if name.startswith("_"):
            continue
        missing = {"repo", "model", "format", "ids", "path", "hookpoint"} - set(e)
        if missing or e["format"] not in FORMATS:
            raise UserError(
                f"release registry entry {name!r}: missing {sorted(missing)} or unknown format "
                f"{e.get('format')!r} (formats: {', '.join(FORMATS)})"
            )
        ids = e["ids"]
        listed = list(ids["list"]) if "list" in ids else [ids["template"].format(layer=i) for i in range(ids["layers"])]
        out[name] = Release(
            name,
            e["repo"],
            e["model"],
            e["format"],
            int(e.get("context", 1024)),
            listed,
            e.get("id_pattern"),
            e["path"],
            e["hookpoint"],
            tuple(e["transcoders"]) if e.get("transcoders") else None,
        )
    return out


def find_release(name: str, path: Path | None = None) -> Release:
    reg = registry(path)
    if name not in reg:
        close = difflib.get_close_matches(name, list(reg), n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UserError(f"unknown release {name!r}{hint} (known: {', '.join(sorted(reg))})")
    return reg[name]


# ---------------------------------------------------------------- loaders (one folder -> SAE on raw activations)


def _need(t: dict, shapes: dict, path: Path) -> None:
    for n, s in shapes.items():
        if n not in t:
            raise UserError(f"{path} lacks {n!r} (has {', '.join(sorted(t))}): not the format the release names")
        if tuple(t[n].shape) != s:
            raise UserError(f"{path}: {n} has shape {tuple(t[n].shape)}, expected {s}")


def _jumprelu(d_in: int, d_sae: int, hookpoint: str, W_enc, b_enc, W_dec, b_dec, threshold) -> SparseCoder:
    """A JumpReLU SAE whose encoder does NOT subtract b_dec first (Gemma / Llama Scope): we always
    centre by b_dec, so b_enc absorbs b_dec @ W_enc."""
    arch = saelens_readers()["jumprelu"]  # the type that reads SAELens' jumprelu form (sae/kind.py)
    sae = build_sae(SaeConfig(arch=arch, d_in=d_in, d_sae=d_sae, hookpoint=hookpoint))
    sae.load_folded(
        {"W_enc": W_enc, "b_enc": b_enc + b_dec @ W_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": threshold}
    )
    return sae


def load_gemma_scope(folder: Path, hookpoint: str) -> SparseCoder:
    path = Path(folder) / "params.npz"
    if not path.exists():
        raise UserError(f"{folder} has no params.npz: not a Gemma Scope folder")
    try:
        with np.load(path) as z:
            t = {k.lower(): torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npz file ({e})") from e
    if "w_enc" not in t:
        raise UserError(f"{path} lacks W_enc (has {', '.join(sorted(t))}): not a Gemma Scope file")
    d_in, d_sae = t["w_enc"].shape
    _need(t, {"w_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}, path)
    return _jumprelu(d_in, d_sae, hookpoint, t["w_enc"], t["b_enc"], t["w_dec"], t["b_dec"], t["threshold"])


def load_llama_scope(folder: Path, hookpoint: str) -> SparseCoder:
    folder = Path(folder)
    hp, wpath = folder / "hyperparams.json", folder / "checkpoints" / "final.safetensors"
    if not hp.exists() or not wpath.exists():
        raise UserError(f"{folder} lacks hyperparams.json or checkpoints/final.safetensors: not a Llama Scope folder")
    cfg = read_json(hp)
    try:
        d_in, d_sae, theta = int(cfg["d_model"]), int(cfg["d_sae"]), float(cfg["jump_relu_threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{hp} lacks d_model / d_sae / jump_relu_threshold ({e})") from e
    if cfg.get("act_fn", "jumprelu") != "jumprelu":
        raise UserError(f"{hp}: act_fn {cfg.get('act_fn')!r} is not supported (only jumprelu)")
    t = {k: v.float() for k, v in read_tensors(wpath).items()}
    _need(
        t,
        {
            "encoder.weight": (d_sae, d_in),
            "encoder.bias": (d_sae,),
            "decoder.weight": (d_in, d_sae),
            "decoder.bias": (d_in,),
        },
        wpath,
    )
    s_in = s_out = 1.0
    if cfg.get("norm_activation", "dataset-wise") == "dataset-wise":
        norms = cfg.get("dataset_average_activation_norm") or {}
        if "in" not in norms or "out" not in norms:
            raise UserError(f"{hp}: norm_activation dataset-wise needs dataset_average_activation_norm.in/.out")
        s_in, s_out = d_in**0.5 / float(norms["in"]), d_in**0.5 / float(norms["out"])
    elif cfg["norm_activation"] not in ("none", None):
        raise UserError(f"{hp}: norm_activation {cfg['norm_activation']!r} is not supported (dataset-wise, none)")
    W_enc = t["encoder.weight"].t() * s_in  # pre-activations unchanged on raw input
    W_dec, b_dec = t["decoder.weight"].t() / s_out, t["decoder.bias"] / s_out
    return _jumprelu(d_in, d_sae, hookpoint, W_enc, t["encoder.bias"], W_dec, b_dec, torch.full((d_sae,), theta))


def load_release_folder(release: Release, folder: Path, hookpoint: str) -> tuple[SparseCoder, dict]:
    """-> (SAE at `hookpoint`, the original config to keep under saelab.imported_from)."""
    folder = Path(folder)
    if release.format == "gemma-scope":
        return load_gemma_scope(folder, hookpoint), {}
    if release.format == "llama-scope":
        return load_llama_scope(folder, hookpoint), read_json(folder / "hyperparams.json")
    found = detect_format(folder)  # a folder in another layout than the registry says: a clear error
    if found != release.format:
        raise UserError(f"{folder} is a {found} folder but release {release.name} says {release.format}")
    sae, cfg = load_foreign(folder)
    if sae.cfg.out_hookpoint:
        raise UserError(
            f"{folder} is a transcoder; release entries name one hookpoint, so pull only reads SAEs "
            f"(use `saelab import` with the module names)"
        )
    sae.cfg.hookpoint = hookpoint  # the registry knows this model's module names
    return sae, cfg["saelab"]["imported_from"]["cfg"]


# ---------------------------------------------------------------- pull


def download(repo: str, sub: str) -> Path:
    """Only `sub`'s files of a hub repo, into the Hugging Face cache -> the local folder."""
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo, allow_patterns=[f"{sub}/*", f"{sub}/**"]))
    except Exception as e:  # noqa: BLE001 - network, auth (gated repos) and missing-repo errors all end here
        raise UserError(f"could not download {repo}/{sub} from the Hugging Face hub ({type(e).__name__}: {e})") from e
    if not (local / sub).exists():
        raise UserError(f"hub repo {repo} has no folder {sub!r}")
    return local / sub


@dataclass
class PullConfig:
    """`saelab pull RELEASE --sae-id ID --out DIR` (or `--list`: the release's sae-ids)."""

    release: str = opt(help="release name, e.g. gemma-scope-2b-pt-res", positional=True)
    sae_id: str | None = opt(
        None, "which SAE of the release, e.g. layer_20/width_16k/average_l0_71", shown="the only one, if one"
    )
    out: str | None = out_option("saelab SAE folder to write", shown="none; needed unless --list")
    list: bool = opt(False, "list the release's sae-ids and exit")
    local: str | None = opt(None, "a local copy of the release repo to read instead of downloading")
    # circuit-tracer releases reading ln2.hook_normalized (Gemma Scope): the model whose MLP norm weights fold
    # into the encoders (loaded once)
    model: str | None = model_option(None, shown="the release's model")
    overwrite: bool = overwrite_option("an existing --out folder")

    def validate(self) -> None:
        check_types(self)
        if not self.list and not self.out:
            raise UserError("give --sae-id and --out (or --list to see the sae-ids)")


def pull_release(cfg: PullConfig, registry_path: Path | None = None) -> Path:
    """Fetch cfg.sae_id of release cfg.release (from the hub, or from `cfg.local`, a local copy of the repo) and
    write it as a saelab folder at cfg.out (the sae-ids of a release: find_release(name).ids). Everything is
    checked before anything is written. `registry_path`: a releases file other than the built-in one."""
    cfg.validate()
    release = find_release(cfg.release, registry_path)
    sae_id = cfg.sae_id or (release.ids[0] if len(release.ids) == 1 else None)  # a release of one: no --sae-id
    if sae_id is None:
        raise UserError(f"give --sae-id: release {release.name} has several (`saelab pull {release.name} --list`)")
    sub, hookpoint = release.resolve(sae_id)
    out = Path(cfg.out)
    if release.format == "circuit-tracer":  # a whole replacement model: a replacement folder, not an SAE folder
        return _pull_circuit_tracer(release, cfg, sub)
    target = open_out(out, SAE_FOLDER, cfg.overwrite)  # the folder is written file by file
    folder = Path(cfg.local) / sub if cfg.local else download(release.repo, sub)
    if not folder.exists():
        raise UserError(f"{folder} does not exist (release {release.name}, sae-id {sae_id})")
    sae, original = load_release_folder(release, folder, hookpoint)
    refuse_non_finite(folder, sae.state_dict())
    prov = Provenance(model_spec=release.model, model_name=release.model, context=release.context)
    target.prepare(move_aside=False)  # the lock: one writer at a time
    written = save_sae(
        sae.eval(),
        out,
        prov,
        {
            "imported_from": {
                "format": release.format,
                "release": release.name,
                "repo": release.repo,
                "sae_id": sae_id,
                "path": sub,
                "cfg": original,
            }
        },
    )
    target.done()
    return written


def _pull_circuit_tracer(release: Release, cfg: PullConfig, sub: str) -> Path:
    from .circuit_tracer_io import replacement_from_ct
    from .circuit_tracer_releases import download_release, read_release_set

    if cfg.local:
        folder = Path(cfg.local) / sub
    elif sub not in ("", "."):
        folder = download(release.repo, sub)
    else:
        folder = download_release(release.repo, list(release.transcoders or ()))
    if not folder.exists():
        raise UserError(f"{folder} does not exist (release {release.name})")
    ct = read_release_set(folder, release.model, list(release.transcoders or ()), release.hookpoint)
    origin = {"format": "circuit-tracer", "release": release.name, "repo": release.repo, "path": str(folder)}
    return replacement_from_ct(ct, Path(cfg.out), cfg.model or release.model, release.context, cfg.overwrite, origin)
