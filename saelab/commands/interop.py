"""Interop commands: import (SAELens / sparsify into saelab folders), export (saelab folders out), pull (one
SAE of a public release). Options: ImportConfig / ExportConfig (sae/convert.py), PullConfig (sae/releases.py)."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_import(a) -> None:
    from ..sae.convert import ImportConfig, import_folders

    for f in import_folders(build_config(ImportConfig, a, a.config)):
        print(f)


def cmd_export(a) -> None:
    from ..sae.convert import ExportConfig, export_folders

    for f in export_folders(build_config(ExportConfig, a, a.config)):
        print(f)


def cmd_pull(a) -> None:
    from ..sae.releases import PullConfig, find_release, pull_release

    cfg = build_config(PullConfig, a, a.config)
    if cfg.list:
        r = find_release(cfg.release)
        print(
            f"# {r.name}: {r.repo} ({r.format}) for {r.model}; sae-ids"
            + (f" matching {r.id_pattern}" if r.id_pattern else "")
            + ":"
        )
        for i in r.ids:
            print(i)
        return
    print(pull_release(cfg))


def register(sub) -> None:
    from ..sae.convert import ExportConfig, ImportConfig
    from ..sae.releases import PullConfig

    add_config_command(
        sub,
        "pull",
        PullConfig,
        cmd_pull,
        help="download one SAE of a public release (Gemma Scope, Llama Scope, SAELens, EleutherAI "
        "sparsify) into a saelab folder, or a transcoder set circuit-tracer uses into a replacement folder",
        description="RELEASE is a name in saelab/sae/releases.json (repo, model, format, sae-ids, "
        "hookpoints). Needs internet unless --local points at a copy of the repo.",
    )
    add_config_command(
        sub,
        "import",
        ImportConfig,
        cmd_import,
        help="convert SAELens / sparsify SAEs (folder or hub id) into saelab folders, a circuit-tracer folder into "
        "a replacement folder",
        description="SRC is a SAELens folder (cfg.json + sae_weights.safetensors), a sparsify folder "
        "(cfg.json + sae.safetensors) or a folder of such folders, a circuit-tracer folder (config.yaml + "
        "layer_*.safetensors or W_enc_*/W_dec_*.safetensors), or a Hugging Face hub "
        "id owner/repo[/sub/folder] (needs internet).",
    )
    add_config_command(
        sub,
        "export",
        ExportConfig,
        cmd_export,
        help="write saelab SAE folders in SAELens or sparsify layout, or a replacement folder in circuit-tracer's",
    )
