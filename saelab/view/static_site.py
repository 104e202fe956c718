"""`saelab dashboard`: static HTML that opens offline from the disk.

OUT/index.html             every feature (density, max, explanation, top tokens) with a filter box
OUT/features/<i>.html      one page per feature (so 50,000 features never make one page); tokens with no
                           activation are plain text, the others one <b> with a shade class
OUT/style.css              the one stylesheet every page links (shared, not repeated per page)
OUT/page.js                the one script every feature page links: it draws the histogram and logit bars
                           from the numbers in the page (view/page_script.py)
OUT/density.png            histogram of log10 firing density over features
OUT/features.json          the index rows as data (id, density, max_act, explanation, top_tokens, promoted)
OUT/manifest.json          what was shown: SAE folder, cache, tokens, explanations, wall time
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserError
from ..option_checks import check_types, need_at_least
from ..options import LATENTS_HELP, latent_list, opt, out_option, overwrite_option, threads_option
from ..out_folder import finish, hold
from ..sae.folder import open_sae
from ..storage import read_json, refuse_replacing, write_json, write_text
from .feature_store import FeatureStore
from .page_script import PAGE_JS
from .render import CSS, feature_page, index_page

OUTPUTS = ("index.html", "features", "density.png", "features.json", "manifest.json")
KIND = "saelab dashboard"


def check_out(out: Path, overwrite: bool) -> None:
    """Before any work: never replace files the dashboard did not write (a run folder's manifest.json),
    and replace an earlier dashboard only with --overwrite."""
    out = Path(out)
    refuse_replacing(out, OUTPUTS, overwrite, "dashboard")
    m = out / "manifest.json"
    if m.exists():
        try:
            info = read_json(m)
        except UserError:
            info = None
        if not (isinstance(info, dict) and (info.get("kind") == KIND or {"cache_tokens", "n_features"} <= set(info))):
            raise UserError(f"{m} belongs to something else (not a dashboard); write the dashboard to another --out")


@dataclass
class DashboardConfig:
    """`saelab dashboard SAE --out DIR`: which features, with which examples and explanations."""

    sae: str = opt(help="SAE folder", positional=True)
    out: str = out_option("output folder")
    cache: str | None = opt(None, "latent cache from `saelab cache`", shown="build one over --tokens")
    tokens: int = opt(16384, "held-out tokens to cache when there is no --cache")
    explanations: str | None = opt(
        None,
        "interpretation run folder (`saelab explain --out`, with its scores) or a JSONL file of {latent, explanation}",
        shown="SAE/explanations.jsonl if present",
    )
    latents: list[str] | None = opt(None, LATENTS_HELP, shown="all")
    overwrite: bool = overwrite_option("an existing dashboard in --out")
    threads: int | None = threads_option()

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "threads", "tokens")
        latent_list(self.latents)  # the syntax, before anything opens


def build_dashboard(cfg: DashboardConfig) -> tuple[Path, int]:
    """Check --out and --latents (against the SAE's size) before any model work, build the feature
    store, write the pages -> (out, number of feature pages)."""
    cfg.validate()
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    sae = open_sae(Path(cfg.sae)).sae
    latents = latent_list(cfg.latents, sae.cfg.d_sae)
    store = FeatureStore.build(cfg.sae, cache=cfg.cache, tokens=cfg.tokens, explanations=cfg.explanations)
    write_dashboard(store, out, latents, overwrite=cfg.overwrite)
    return out, len(latents or range(sae.cfg.d_sae))


def density_png(freq: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    live = freq[freq > 0]
    if len(live):
        ax.hist(np.log10(live), bins=50, color="#e8743b")
    ax.set_xlabel("log10 firing density")
    ax.set_ylabel("features")
    ax.set_title(f"{title} ({int((freq == 0).sum())} never fired)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_dashboard(
    store: FeatureStore, out: Path, latents: list[int] | None = None, overwrite: bool = False, progress: bool = True
) -> Path:
    out = Path(out)
    check_out(out, overwrite)
    hold(out)  # the folder's lock: no other writer while the pages are written
    t0 = time.time()
    (out / "features").mkdir(parents=True, exist_ok=True)
    latents = list(range(store.d_sae)) if latents is None else latents
    written = set(latents)  # a --latents subset links only to pages it writes (no dead links)
    for i in tqdm(latents, desc="pages", disable=not progress):
        html = feature_page(
            store.view(i),
            link=lambda j: f"{j}.html" if j in written else None,
            home="../index.html",
            css_href="../style.css",
            js_href="../page.js",
        )
        write_text(out / "features" / f"{i}.html", html)
    write_text(out / "style.css", CSS)
    write_text(out / "page.js", PAGE_JS)
    rows = [store.summary(i) for i in latents]
    write_text(
        out / "index.html",
        index_page(
            store.name,
            store.d_sae,
            store.site_label,
            store.n_positions,
            rows,
            sum(1 for i in latents if store.explanation(i)),
            css_href="style.css",
        ),
    )
    density_png(store.freq, out / "density.png", f"{store.name}: feature density")
    write_json(out / "features.json", rows)
    write_json(
        out / "manifest.json",
        {
            "kind": KIND,
            "sae": str(store.sae_dir),
            "cache": str(store.cache.path),
            "cache_tokens": int(store.cache.manifest["n_tokens"]),
            "n_features": len(latents),
            "n_explained": rows and sum(1 for r in rows if r["explanation"]),
            "wall_s": time.time() - t0,
        },
    )
    finish(out)
    return out
