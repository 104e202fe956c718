"""`saelab dashboard`: static HTML that opens offline from the disk.

OUT/index.html             every feature (density, max, explanation, top tokens) with a filter box
OUT/features/<i>.html      one self-contained page per feature (so 50,000 features never make one page)
OUT/density.png            histogram of log10 firing density over features
OUT/features.json          the index rows as data (id, density, max_act, explanation, top_tokens, promoted)
OUT/manifest.json          what was shown: SAE folder, cache, tokens, explanations, wall time
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserError
from ..storage import write_json
from .feature_store import FeatureStore
from .render import feature_page, index_page


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def parse_latents(spec: str | None, d_sae: int) -> list[int]:
    """None -> all; `0-99,120,5` -> those (checked against d_sae)."""
    if not spec:
        return list(range(d_sae))
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise UserError(f"--latents {spec!r}: expected numbers and ranges like 0-99,120") from None
    bad = [i for i in out if not 0 <= i < d_sae]
    if bad:
        raise UserError(f"--latents: {bad[:5]} outside 0..{d_sae - 1}")
    return sorted(set(out))


def write_dashboard(store: FeatureStore, out: Path, latents: list[int] | None = None, overwrite: bool = False,
                    progress: bool = True) -> Path:
    out = Path(out)
    if (out / "index.html").exists() and not overwrite:
        raise UserError(f"{out} already holds a dashboard; pass --overwrite to replace it")
    t0 = time.time()
    (out / "features").mkdir(parents=True, exist_ok=True)
    latents = list(range(store.d_sae)) if latents is None else latents
    for i in tqdm(latents, desc="pages", disable=not progress):
        html = feature_page(store.view(i), link=lambda j: f"{j}.html", home="../index.html")
        _write_text(out / "features" / f"{i}.html", html)
    rows = [store.summary(i) for i in latents]
    _write_text(out / "index.html", index_page(store.name, store.d_sae, store.sae.cfg.hookpoint, store.n_positions,
                                               rows, sum(1 for i in latents if store.explanation(i))))
    density_png(store.freq, out / "density.png", f"{store.name}: feature density")
    write_json(out / "features.json", rows)
    write_json(out / "manifest.json", {"sae": str(store.sae_dir), "cache": str(store.cache.path),
                                       "cache_tokens": int(store.cache.manifest["n_tokens"]),
                                       "n_features": len(latents), "n_explained": rows and sum(1 for r in rows if r["explanation"]),
                                       "wall_s": time.time() - t0})
    return out
