"""A replacement model: transcoders standing in for every chosen layer's MLP, read from a replacement folder.

A training run with `--layers` (train/layers.py) is a replacement folder: its SAE folders plus
`replacement.json`, written last (so a folder that has one holds every dictionary it names):

    {"format": "saelab.replacement", "version": 1, "kind": "plt" | "clt",
     "model": {"spec": ..., "name": ...}, "family": "llama", "model_layers": 30,
     "layers": [0, ..., 29], "input_sites": [...], "output_sites": [...],
     "dictionaries": ["<SAE folder, relative>", ...]}   # one per layer (plt) or one (clt)

`open_replacement` checks the manifest against the folders it names (each exists, is a transcoder of
exactly the listed sites, trained on the listed model; layers unique and in range); every error names
the layer and the folder. `replaced(model, replacement)` splices every layer at once: a PLT through
`spliced` per layer, a CLT through `clt_spliced` (sae/splice.py: causal, each layer's output reads the
latents of that layer and every earlier one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..storage import read_json, write_json
from .folder import Provenance, SaeFolder, open_sae
from .splice import clt_spliced, spliced

MANIFEST = "replacement.json"
FORMAT, VERSION = "saelab.replacement", 1
KINDS = ("plt", "clt")
SEP = "+"  # a CLT's sites, joined (as a crosscoder's)


@dataclass(frozen=True)
class LayerPlan:
    """What a replacement covers: its layers and their MLP sites (a --layers run's plan, an import's layout)."""

    layers: tuple[int, ...]
    family: str
    model_layers: int
    input_sites: tuple[str, ...]
    output_sites: tuple[str, ...]

    @property
    def hookpoints(self) -> list[str]:
        """One 'A->B' transcoder entry per layer, layer order (TrainConfig.hookpoints of the run)."""
        return [f"{a}->{b}" for a, b in zip(self.input_sites, self.output_sites)]


@dataclass
class Replacement:
    """An opened, checked replacement folder: one transcoder per layer (plt) or one CLT over them all."""

    path: Path
    kind: str  # "plt" | "clt"
    layers: list[int]
    input_sites: list[str]  # each layer's MLP input, layer order
    output_sites: list[str]  # each layer's MLP output
    model_spec: str
    model_name: str
    family: str
    model_layers: int
    folders: list[SaeFolder]  # one per layer (plt) or one (clt)

    @property
    def dictionaries(self) -> list:
        return [f.sae for f in self.folders]

    @property
    def provenance(self) -> Provenance:
        """How the dictionaries were trained (model, corpus, context, held-out split, sink rule): the first's;
        one training run wrote them all."""
        return self.folders[0].provenance


def write_replacement(out: Path, kind: str, plan, model_spec: str, model_name: str, folders: list[Path]) -> Path:
    """replacement.json for the dictionaries `folders` (inside `out`) covering `plan`, atomically: the last file
    a --layers run or an import writes."""
    out = Path(out)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": {"spec": str(model_spec), "name": model_name},
        "family": plan.family,
        "model_layers": plan.model_layers,
        "layers": list(plan.layers),
        "input_sites": list(plan.input_sites),
        "output_sites": list(plan.output_sites),
        "dictionaries": [os.path.relpath(f, out) for f in folders],
    }
    write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def is_replacement(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def open_replacement(path, device: str = "cpu") -> Replacement:
    """The replacement folder at `path`, every dictionary loaded and checked against replacement.json."""
    path = Path(path)
    m = read_manifest(path)
    layers, ins, outs, dicts = m["layers"], m["input_sites"], m["output_sites"], m["dictionaries"]
    n = m["model_layers"]
    seen: set[int] = set()
    for x in layers:
        if not isinstance(x, int) or not 0 <= x < n:
            raise UserError(f"{path / MANIFEST}: layer {x!r} is not a layer of the {n}-layer model")
        if x in seen:
            raise UserError(f"{path / MANIFEST}: layer {x} is listed twice")
        seen.add(x)
    if not len(layers) == len(ins) == len(outs):
        raise UserError(f"{path / MANIFEST}: {len(layers)} layers but {len(ins)} input and {len(outs)} output sites")
    want = len(layers) if m["kind"] == "plt" else 1
    if len(dicts) != want:
        raise UserError(
            f"{path / MANIFEST}: a {m['kind']} of {len(layers)} layers names {want} dictionaries, not {len(dicts)}"
        )
    if m["kind"] == "plt":
        owners = [(f"layer {x}", d, a, b) for x, d, a, b in zip(layers, dicts, ins, outs)]
    else:
        owners = [(f"layers {layers[0]}-{layers[-1]}", dicts[0], SEP.join(ins), SEP.join(outs))]
    folders = [_open_dictionary(path, who, d, a, b, m["model"]["spec"], device) for who, d, a, b in owners]
    return Replacement(
        path, m["kind"], layers, ins, outs, m["model"]["spec"], m["model"].get("name", ""), m["family"], n, folders
    )


def read_manifest(path: Path) -> dict:
    """replacement.json of `path`, its fields checked (the folders it names are checked by open_replacement)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a replacement folder (no such folder)")
    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not a replacement folder: it has no {MANIFEST} (train one with --layers)")
    m = read_json(path / MANIFEST)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"{path / MANIFEST} is not a saelab replacement manifest (format {FORMAT!r})")
    if m.get("version", 0) > VERSION:
        raise UserError(f"{path / MANIFEST} has version {m['version']}; this saelab reads up to {VERSION}")
    keys = ("kind", "model", "family", "model_layers", "layers", "input_sites", "output_sites", "dictionaries")
    missing = [k for k in keys if k not in m]
    if missing:
        raise UserError(f"{path / MANIFEST} lacks {', '.join(missing)}")
    if m["kind"] not in KINDS:
        raise UserError(f"{path / MANIFEST}: kind {m['kind']!r} is not one of {', '.join(KINDS)}")
    if not isinstance(m["model"], dict) or "spec" not in m["model"]:
        raise UserError(f"{path / MANIFEST}: model must be an object with a spec")
    return m


def _open_dictionary(root: Path, who: str, rel: str, a: str, b: str, model_spec: str, device: str) -> SaeFolder:
    """One listed dictionary: it exists, is a transcoder from `a` to `b`, and was trained on `model_spec`."""
    folder = root / rel
    if not folder.is_dir():
        raise UserError(f"{root / MANIFEST}: {who}: dictionary folder {folder} is missing")
    f = open_sae(folder, device)
    c = f.sae.cfg
    if not c.is_transcoder:
        raise UserError(f"{who}: {folder} is an SAE of {c.hookpoint}, not a transcoder {a}->{b}")
    if (c.hookpoint, c.out_hookpoint) != (a, b):
        raise UserError(f"{who}: {folder} is a transcoder {c.hookpoint}->{c.out_hookpoint}, not {a}->{b}")
    if str(f.provenance.model_spec) != str(model_spec):
        raise UserError(f"{who}: {folder} was trained on model {f.provenance.model_spec!r}, not {model_spec!r}")
    return f


@contextmanager
def replaced(
    model, replacement: Replacement, keep: torch.Tensor | None = None, error_terms: bool = False
) -> Iterator[None]:
    """Every layer's MLP replaced at once. `keep` [batch, seq]: positions left clean (sinks); `error_terms`:
    each layer's reconstruction error added back, so the output is the clean model's."""
    with ExitStack() as stack:
        if replacement.kind == "plt":
            for sae in replacement.dictionaries:
                stack.enter_context(spliced(model, sae, keep=keep, error_term=error_terms))
        else:
            clt = replacement.dictionaries[0]
            stack.enter_context(
                clt_spliced(model, clt, replacement.input_sites, replacement.output_sites, keep, error_terms)
            )
        yield
