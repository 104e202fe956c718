"""Interoperability: read SAEs published by SAELens and EleutherAI `sparsify`, write ours in both.

Why: users enter at any stage with their own dictionary, and take ours to the tools they use.
Everything converts to one in-memory `SparseCoder` acting on RAW activations, so the rest of
saelab (evaluate, splice, latent cache) never sees a foreign layout.

The formats themselves: foreign_saelens.py (SAELens v5 and v6) and foreign_sparsify.py (EleutherAI
sparsify), each a reader and a writer, with their folder layouts and the conversions that are not a plain
copy; what both share is in foreign_layout.py. This module tells a folder's format, finds the SAE
folders of a run folder or a hub id, and loads either format (`load_foreign`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from ..storage import read_json
from .base import SparseCoder
from .foreign_layout import SAELENS_WEIGHTS, SPARSIFY_PREFIX, SPARSIFY_WEIGHTS
from .foreign_saelens import load_saelens
from .foreign_sparsify import load_sparsify
from .layout import CFG, cfg_json


def detect_format(folder: Path) -> str:
    """'saelab' | 'saelens' | 'sparsify' for one SAE folder; a clear error for anything else."""
    folder = Path(folder)
    if not (folder / CFG).exists():
        raise UserError(f"{folder} has no {CFG}: not an SAE folder (expected SAELens, sparsify or saelab layout)")
    if (folder / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    if (folder / SAELENS_WEIGHTS).exists():
        return "saelab" if "saelab" in read_json(folder / CFG) else "saelens"
    raise UserError(f"{folder} has {CFG} but neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} (sparsify)")


def sae_folders(root: Path) -> list[Path]:
    """One SAE folder, or a run folder with SAE folders inside (sparsify writes one per hookpoint)."""
    root = Path(root)
    if (root / CFG).exists():
        return [root]
    subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / CFG).exists()) if root.is_dir() else []
    if not subs:
        raise UserError(f"{root} holds no SAE folder (a folder with {CFG})")
    return subs


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")


def resolve_source(spec: str, download=None) -> Path:
    """A local folder, or `owner/repo[/sub/folder]` on the Hugging Face hub (downloaded once into
    the HF cache; only the sub-folder's files are fetched)."""
    p = Path(spec)
    if p.exists():
        return p
    if not _HUB_ID.match(spec):
        raise UserError(f"{spec} is neither an existing folder nor a hub id (owner/repo[/sub/folder])")
    owner, repo, *rest = spec.split("/")
    sub = "/".join(rest)
    if download is None:
        from huggingface_hub import snapshot_download as download
    try:
        local = Path(download(f"{owner}/{repo}", allow_patterns=[f"{sub}/*"] if sub else None))
    except Exception as e:  # noqa: BLE001 - network, auth and missing-repo errors all end here
        raise UserError(
            f"could not download {owner}/{repo} from the Hugging Face hub ({type(e).__name__}: {e}); "
            f"without internet, pass a local folder"
        ) from e
    folder = local / sub if sub else local
    if not folder.exists():
        raise UserError(f"hub repo {owner}/{repo} has no folder {sub!r}")
    return folder


def load_foreign(
    folder: Path, device: str = "cpu", norm_scaling_factor: float | None = None, prefix: str = SPARSIFY_PREFIX
) -> tuple[SparseCoder, dict]:
    """Load a SAELens or sparsify folder -> (SAE on raw activations, cfg.json in OUR layout with the
    original config kept under saelab.imported_from)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    if fmt == "saelens":
        sae, meta = load_saelens(folder, norm_scaling_factor, prefix)
    elif fmt == "sparsify":
        sae, meta = load_sparsify(folder, prefix)
    else:
        raise UserError(f"{folder / CFG} has a `saelab` block without `config`: the file is damaged")
    extra = {
        "imported_from": {"format": fmt, "path": str(folder), "cfg": read_json(folder / CFG)},
        "model_spec": meta.get("model_name") or "embedded",
    }
    return sae.to(device).eval(), cfg_json(sae, meta.get("model_name") or "", meta.get("context_size") or 0, extra)
