"""Static dashboard size per 1,000 features (issue 31 item 5): write N feature pages of a trained SAE with
`static_site.write_dashboard` and sum their bytes (feature pages only, as docs/research/view.md measured).

    python bench/dashboard_size.py --sae SAE_DIR --cache CACHE [--n 200] [--out /tmp/dash]

Run it with PYTHONPATH pointing at two checkouts (before / after) over the same --cache to compare.
The shared style.css and page.js are written once per dashboard and reported apart (style_bytes, script_bytes).
Result: bench/dashboard_size.result.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from saelab.view.feature_store import FeatureStore
from saelab.view.static_site import write_dashboard


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", required=True)
    ap.add_argument("--cache", required=True, help="a latent cache from `saelab cache SAE --out CACHE`")
    ap.add_argument("--n", type=int, default=200, help="feature pages to write (0..n-1)")
    ap.add_argument("--out", default="/tmp/saelab_dashboard_size")
    a = ap.parse_args()
    store = FeatureStore.build(a.sae, cache=a.cache, progress=False)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    write_dashboard(store, out, list(range(a.n)), progress=False)
    pages = sorted((out / "features").iterdir())
    size = sum(p.stat().st_size for p in pages)
    print(
        json.dumps(
            {
                "pages": len(pages),
                "bytes": size,
                "mb_per_1000_features": round(size / len(pages) * 1000 / 1e6, 2),
                "index_bytes": (out / "index.html").stat().st_size,
                "style_bytes": (out / "style.css").stat().st_size,
                # the shared script, written once per dashboard (absent before the pages carried numbers)
                "script_bytes": (out / "page.js").stat().st_size if (out / "page.js").exists() else 0,
            }
        )
    )


if __name__ == "__main__":
    main()
