"""`saelab import` / `saelab export`: convert SAELens and sparsify folders into saelab folders and back, and
circuit-tracer folders into replacement folders and back. The format readers and writers live in foreign.py,
foreign_saelens.py, foreign_sparsify.py and foreign_circuit_tracer.py (with circuit_tracer_io.py); this module
only moves folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..option_checks import check_types, need_at_least, need_positive
from ..options import model_option, opt, out_option, overwrite_option
from ..out_folder import SAE_FOLDER, open_out
from .circuit_tracer_io import export_circuit_tracer, import_circuit_tracer
from .folder import Provenance, open_sae, refuse_non_finite, save_sae
from .foreign import detect_format, load_foreign, resolve_source, sae_folders
from .foreign_circuit_tracer import CT_CONFIG
from .foreign_layout import SPARSIFY_PREFIX
from .foreign_saelens import export_saelens
from .foreign_sparsify import export_sparsify


@dataclass
class ImportConfig:
    """`saelab import SRC --out DIR`: SAELens / sparsify folders (or a hub id) into saelab folders; a circuit-tracer
    folder (config.yaml + layer files) into a replacement folder."""

    src: str = opt(help="foreign SAE folder, folder of them, or hub id owner/repo[/sub/folder]", positional=True)
    out: str = out_option("saelab SAE folder (one SAE) or parent folder (several)")
    model: str | None = model_option(None, shown="the model name in the foreign cfg; recorded for eval")
    context: int | None = opt(None, "context size to record", shown="the foreign cfg's, else 256")
    norm_scaling_factor: float | None = opt(
        None, "SAELens normalize_activations=expected_average_only_in: the factor to fold in"
    )
    prefix: str = opt(
        SPARSIFY_PREFIX, "sparsify hookpoints are relative to model.base_model; this prefix makes them module names"
    )
    overwrite: bool = overwrite_option("existing saelab SAE folders")

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 2, "context")
        need_positive(self, "norm_scaling_factor")


@dataclass
class ExportConfig:
    """`saelab export DIR... --format F --out DIR`: saelab folders in SAELens or sparsify layout, a replacement
    folder in circuit-tracer's."""

    sae_dirs: list[str] = opt(help="saelab SAE folders (circuit-tracer: one replacement folder)", positional=True)
    format: str = opt(help="target layout", choices=("saelens", "sparsify", "circuit-tracer"))
    out: str = out_option(
        "SAELens: the SAE folder (or a parent for several); sparsify: the run folder that gets one folder per "
        "hookpoint; circuit-tracer: the folder of config.yaml and the layer files"
    )
    prefix: str = opt(SPARSIFY_PREFIX, "stripped from hookpoints for sparsify folder names")
    overwrite: bool = overwrite_option("existing exported files")

    def validate(self) -> None:
        check_types(self)


def import_folders(cfg: ImportConfig) -> list[Path]:
    """Convert every SAE under cfg.src (folder or hub id) into saelab folders under cfg.out."""
    cfg.validate()
    root = resolve_source(cfg.src)
    if (root / CT_CONFIG).exists():  # circuit-tracer: the whole folder is one replacement model
        return [import_circuit_tracer(root, Path(cfg.out), cfg.model, cfg.context, cfg.overwrite)]
    folders = sae_folders(root)
    out = Path(cfg.out)
    folder = open_out(out, SAE_FOLDER, cfg.overwrite, inputs=folders)  # the folders are written file by file
    ours = [f for f in folders if detect_format(f) == "saelab"]
    if ours:
        raise UserError(
            f"{ours[0]} is already a saelab SAE folder: every command reads it as it is (no import "
            f"needed; `saelab export` writes SAELens or sparsify)"
        )
    loaded = [(f, *load_foreign(f, norm_scaling_factor=cfg.norm_scaling_factor, prefix=cfg.prefix)) for f in folders]
    provs = []
    for f, sae, foreign_cfg in loaded:  # all parsed (and every cfg field checked) before anything is written
        refuse_non_finite(f, sae.state_dict())  # NaN/inf weights are never imported
        provs.append(Provenance.from_cfg(foreign_cfg, f / "cfg.json"))
    written = []
    folder.prepare(move_aside=False)  # the lock: one writer at a time
    for (f, sae, foreign_cfg), prov in zip(loaded, provs):
        prov.model_spec = cfg.model or prov.model_spec
        prov.model_name = prov.model_name or prov.model_spec
        prov.context = cfg.context or prov.context
        target = out if len(loaded) == 1 else out / f.name
        written.append(save_sae(sae, target, prov, {"imported_from": foreign_cfg["saelab"]["imported_from"]}))
    folder.done()
    return written


def export_folders(cfg: ExportConfig) -> list[Path]:
    """Write each saelab folder of cfg.sae_dirs in SAELens or sparsify layout under cfg.out."""
    cfg.validate()  # --format is one of its choices
    out = Path(cfg.out)
    if cfg.format == "circuit-tracer":
        if len(cfg.sae_dirs) != 1:
            raise UserError(f"--format circuit-tracer exports one replacement folder; got {len(cfg.sae_dirs)}")
        return [export_circuit_tracer(Path(cfg.sae_dirs[0]), out, cfg.overwrite)]
    folder = open_out(out, SAE_FOLDER, cfg.overwrite, inputs=cfg.sae_dirs)  # written file by file
    loaded = [open_sae(Path(d)) for d in cfg.sae_dirs]
    written = []
    folder.prepare(move_aside=False)  # the lock: one writer at a time
    for f in loaded:
        if cfg.format == "sparsify":
            written.append(export_sparsify(f.sae, out, cfg.prefix))
        else:
            p = f.provenance
            target = out if len(loaded) == 1 else out / f.name
            written.append(export_saelens(f.sae, target, p.model_name, p.context, p.corpus))
    folder.done()
    return written
