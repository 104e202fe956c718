"""`saelab seeds A B C ...`: seed stability of a group of dictionaries at one site. For every ordered
pair (A, B): the fraction of A's alive latents matched by a latent of B (nearest decoder direction
with cosine >= --cos-threshold and, on the same held-out tokens, activation correlation >=
--corr-threshold), overall and by A's frequency band (evaluate/seed_match.py has the numbers;
`saelab bench --metrics seeds` reports the same over the bench's SAE folders).

Seeds of one configuration give how reproducible its features are (Paulo & Belrose 2025 find ~30%
shared for some settings); the same command over different architectures or sparsities says how far
they agree. The tokens are the held-out rows the dictionaries were trained with (`open_shared_data`),
without any position that one of them leaves out (sinks): every dictionary is read on the same tokens.
`--tokens 0` skips the model: decoder cosines only, no bands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..evaluate.seed_match import DESCRIPTIONS, SeedGroup
from ..option_checks import check_types, need_at_least, need_fraction
from ..options import corpus_option, model_option, opt, out_option, overwrite_option, threads_option
from ..sae.folder import SaeFolder, open_sae, open_shared_data
from ..storage import write_json


@dataclass
class SeedsConfig:
    """`saelab seeds`: two or more SAE folders at one site (seeds, architectures or sparsities)."""

    folders: list[str] = opt(help="SAE folders at one site (two or more)", positional=True)
    out: str | None = out_option("output folder", shown="FIRST/seeds")
    tokens: int = opt(50_000, "held-out tokens for densities and activation correlations (0: decoders only)")
    cos_threshold: float = opt(0.7, "decoder cosine a match needs")
    corr_threshold: float = opt(0.7, "activation correlation a match needs (with --tokens > 0)")
    batch_rows: int = opt(16, "token rows per forward")
    model: str | None = model_option(None, shown="the one recorded in the folders (they must agree otherwise)")
    corpus: str | None = corpus_option(None, shown="the folders' held-out rows")
    threads: int | None = threads_option()
    overwrite: bool = overwrite_option("an existing seeds.json")

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "threads", "batch_rows")
        need_at_least(self, 0, "tokens")
        need_fraction(self, "cos_threshold")
        if not -1 <= self.corr_threshold <= 1:
            raise UserError(f"--corr-threshold must be in [-1, 1], not {self.corr_threshold}")
        if len(self.folders) < 2:
            raise UserError("saelab seeds needs two or more SAE folders")
        if len(set(self.folders)) < len(self.folders):
            raise UserError("a folder is named twice; give each dictionary once")


def seed_stability(cfg: SeedsConfig) -> dict:
    """Matched fractions for every ordered pair of cfg.folders into cfg.out/seeds.json (returned)."""
    cfg.validate()
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.folders[0]) / "seeds"
    if (out_dir / "seeds.json").exists() and not cfg.overwrite:
        raise UserError(f"{out_dir / 'seeds.json'} exists; pass --overwrite to replace it")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folders = _open_group(cfg.folders)
    labels = _labels(folders)
    group = SeedGroup([(f.sae, f.provenance.sink) for f in folders], labels, cfg.cos_threshold, cfg.corr_threshold)
    if cfg.tokens:
        data = open_shared_data(folders, model=cfg.model, corpus=cfg.corpus)
        group.measure(data.lm.model, data.lm.tokenizer, data.rows, cfg.tokens, cfg.batch_rows)
    rows = group.pairs()
    for r, (i, j) in zip(rows, group.order):
        r["a_path"], r["b_path"] = str(folders[i].path), str(folders[j].path)
    tokens_used = group.tokens
    result = {
        "site": _site(folders[0]),
        "model": folders[0].provenance.model_name,
        "out": str(out_dir),
        "folders": [str(f.path) for f in folders],
        "labels": labels,
        "tokens": tokens_used,
        "cos_threshold": cfg.cos_threshold,
        "corr_threshold": cfg.corr_threshold if cfg.tokens else None,
        "pairs": rows,
        "mean_frac_matched": sum(r["all"].get("frac_matched", 0.0) for r in rows) / len(rows),
        "descriptions": DESCRIPTIONS,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "seeds.json", result)
    return result


def _site(f: SaeFolder) -> str:
    return f.sae.cfg.out_hookpoint or f.sae.cfg.hookpoint


def _labels(folders: list[SaeFolder]) -> list[str]:
    """Folder name, arch and k; the parent folder's name too where names repeat (run/model.layers.6-topk-k32)."""
    names = [f.name for f in folders]
    out = []
    for f in folders:
        c = f.sae.cfg
        name = f"{f.path.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name
        out.append(f"{name} ({c.arch}" + (f", k={c.k})" if c.k else ")"))
    return out


def _open_group(paths: list[str]) -> list[SaeFolder]:
    """The folders, refused unless every one writes the same site (and width) of one model."""
    folders = [open_sae(Path(p)) for p in paths]
    first = folders[0]
    for f in folders:
        if f.sae.W_dec.dim() != 2:
            raise UserError(f"{f.path}: a {f.sae.cfg.arch} has no single decoder direction per latent")
        width, first_width = f.sae.W_dec.shape[1], first.sae.W_dec.shape[1]
        if _site(f) != _site(first) or width != first_width:
            raise UserError(
                f"{first.path} writes {_site(first)} (width {first_width}) but {f.path} writes {_site(f)} "
                f"(width {width}); latents are comparable only at the same site"
            )
        if f.provenance.model_name != first.provenance.model_name:
            raise UserError(
                f"{first.path} belongs to {first.provenance.model_name} and {f.path} to {f.provenance.model_name}"
            )
    return folders
