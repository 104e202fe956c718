"""`saelab seeds A B C ...`: seed stability of a group of dictionaries at one site. For every ordered
pair (A, B): the fraction of A's alive latents matched by a latent of B (nearest decoder direction
with cosine >= --cos-threshold and, on the same held-out tokens, activation correlation >=
--corr-threshold), overall and by A's frequency band (seed_match.py has the numbers).

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
from tqdm.auto import tqdm

from ..errors import UserError
from ..evaluate.metrics import batches, heldout_selection, sae_sink_mask
from ..models import collect_activations
from ..option_checks import check_types, need_at_least, need_fraction
from ..options import corpus_option, model_option, opt, out_option, overwrite_option, threads_option
from ..sae.folder import SaeFolder, open_sae, open_shared_data
from ..sinks import special_ids
from ..storage import write_json
from .compare import unit_decoder
from .seed_match import CodeMoments, PairMoments, best_matches, stability


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
    units = [unit_decoder(f.sae) for f in folders]
    pairs = [(i, j) for i in range(len(folders)) for j in range(len(folders)) if i != j]
    found = {p: best_matches(units[p[0]], units[p[1]]) for p in pairs}  # (cosine, index in B) per latent of A
    moments, cross, tokens_used = None, None, 0
    if cfg.tokens:
        moments, cross = _measure(cfg, folders, {p: found[p][1] for p in pairs})
        tokens_used = moments[0].n
        if tokens_used == 0:
            raise UserError("no held-out token is kept by every dictionary (all are sink positions)")
    rows, labels = [], _labels(folders)
    for i, j in pairs:
        cos, idx = found[(i, j)]
        corr = cross[(i, j)].correlation(moments[i], moments[j]) if moments else None
        dens = moments[i].density().float() if moments else None
        rows.append(
            {
                "a": labels[i],
                "b": labels[j],
                "a_path": str(folders[i].path),
                "b_path": str(folders[j].path),
            }
            | stability(cos, corr, dens, cfg.cos_threshold, cfg.corr_threshold, tokens_used)
        )
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


DESCRIPTIONS = {
    "frac_matched": "fraction of A's latents whose nearest decoder direction in B has cosine >= cos_threshold "
    "and whose activations correlate >= corr_threshold with that latent on the same tokens",
    "frac_matched_decoder": "the same with the decoder cosine only",
    "bands": "A's latents by density (fraction of tokens they fire on), in decades; 'all' counts alive latents",
    "median_fires": "median number of tokens a band's latents fired on: a correlation over a handful of fires is "
    "noise, so rare bands need more --tokens",
}


@torch.no_grad()
def _measure(
    cfg: SeedsConfig, folders: list[SaeFolder], match: dict[tuple[int, int], torch.Tensor]
) -> tuple[list[CodeMoments], dict[tuple[int, int], PairMoments]]:
    """One pass over held-out rows: every dictionary's dense codes on the tokens no one leaves out."""
    data = open_shared_data(folders, model=cfg.model, corpus=cfg.corpus)
    special = special_ids(data.lm.tokenizer)
    saes = [f.sae for f in folders]
    hooks = sorted({h for s in saes for h in (s.cfg.hookpoint, s.cfg.out_hookpoint) if h})
    moments = [CodeMoments(s.cfg.d_sae) for s in saes]
    cross = {p: PairMoments(idx) for p, idx in match.items()}
    sel = heldout_selection(data.rows, cfg.tokens)
    for ids in tqdm(list(batches(data.rows, sel, cfg.batch_rows, "cpu")), desc="seeds", leave=False):
        acts = collect_activations(data.lm.model, ids, hooks)
        drop = torch.zeros(ids.shape, dtype=torch.bool)
        for f in folders:
            drop |= sae_sink_mask(f.sae, f.provenance.sink, acts, ids, special)
        codes = [s.encode_raw(acts[s.cfg.hookpoint][~drop].float()).to_dense() for s in saes]
        for m, c in zip(moments, codes):
            m.add(c)
        for (i, j), pm in cross.items():
            pm.add(codes[i], codes[j])
    return moments, cross


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
