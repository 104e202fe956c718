"""Interop commands: import (SAELens / sparsify into saelab folders), export (saelab folders out)."""

from __future__ import annotations


def cmd_import(a) -> None:
    from ..sae.convert import import_saes

    for f in import_saes(a.src, a.out, overwrite=a.overwrite, norm_scaling_factor=a.norm_scaling_factor,
                         prefix=a.prefix, model=a.model, context=a.context):
        print(f)


def cmd_export(a) -> None:
    from ..sae.convert import export_saes

    for f in export_saes(a.sae_dirs, a.format, a.out, overwrite=a.overwrite, prefix=a.prefix):
        print(f)


def cmd_pull(a) -> None:
    from ..sae.releases import find_release, pull

    if a.list:
        r = find_release(a.release)
        print(f"# {r.name}: {r.repo} ({r.format}) for {r.model}; sae-ids"
              + (f" matching {r.id_pattern}" if r.id_pattern else "") + ":")
        for i in r.ids:
            print(i)
        return
    if not a.sae_id or not a.out:
        from ..errors import UserError

        raise UserError("give --sae-id and --out (or --list to see the sae-ids)")
    print(pull(a.release, a.sae_id, a.out, overwrite=a.overwrite, root=a.local))


def register(sub) -> None:
    p = sub.add_parser("pull", help="download one SAE of a public release (Gemma Scope, Llama Scope, SAELens, "
                                    "EleutherAI sparsify) into a saelab folder",
                       description="RELEASE is a name in saelab/sae/releases.json (repo, model, format, sae-ids, "
                                   "hookpoints). Needs internet unless --local points at a copy of the repo.")
    p.add_argument("release", help="release name, e.g. gemma-scope-2b-pt-res")
    p.add_argument("--sae-id", help="which SAE of the release, e.g. layer_20/width_16k/average_l0_71")
    p.add_argument("--out", help="saelab SAE folder to write")
    p.add_argument("--list", action="store_true", help="list the release's sae-ids and exit")
    p.add_argument("--local", help="a local copy of the release repo to read instead of downloading")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(fn=cmd_pull)

    i = sub.add_parser("import", help="convert SAELens / sparsify SAEs (folder or hub id) into saelab folders",
                       description="SRC is a SAELens folder (cfg.json + sae_weights.safetensors), a sparsify folder "
                                   "(cfg.json + sae.safetensors) or a folder of such folders, or a Hugging Face hub "
                                   "id owner/repo[/sub/folder] (needs internet).")
    i.add_argument("src", help="foreign SAE folder, folder of them, or hub id owner/repo[/sub/folder]")
    i.add_argument("--out", required=True, help="saelab SAE folder (one SAE) or parent folder (several)")
    i.add_argument("--model", help="model spec to record for eval (default: the model name in the foreign cfg)")
    i.add_argument("--context", type=int, help="context size to record (default: the foreign cfg's, else 256)")
    i.add_argument("--norm-scaling-factor", type=float,
                   help="SAELens normalize_activations=expected_average_only_in: the factor to fold in")
    i.add_argument("--prefix", default="model.",
                   help="sparsify hookpoints are relative to model.base_model; this prefix makes them module names")
    i.add_argument("--overwrite", action="store_true", help="replace existing saelab SAE folders")
    i.set_defaults(fn=cmd_import)

    e = sub.add_parser("export", help="write saelab SAE folders in SAELens or sparsify layout")
    e.add_argument("sae_dirs", nargs="+", help="saelab SAE folders")
    e.add_argument("--format", required=True, choices=["saelens", "sparsify"], help="target layout (required)")
    e.add_argument("--out", required=True, help="SAELens: the SAE folder (or a parent for several); "
                                                "sparsify: the run folder that gets one folder per hookpoint")
    e.add_argument("--prefix", default="model.", help="stripped from hookpoints for sparsify folder names")
    e.add_argument("--overwrite", action="store_true", help="replace existing exported files")
    e.set_defaults(fn=cmd_export)
