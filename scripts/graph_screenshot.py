"""Screenshot of a graph page as docs/ATTRIBUTION.md shows it: serves SAE folders + a graphs folder with
`saelab serve`, opens /graph/SLUG in Debian's headless Chromium, hovers one node, writes a PNG.

    SAELAB_CACHE=.cache python scripts/graph_screenshot.py GRAPHS_DIR SLUG OUT.png SAE_FOLDER... [--hover NODE_ID]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request

PORT = 8799


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("graphs")
    p.add_argument("slug")
    p.add_argument("out")
    p.add_argument("sae", nargs="+")
    p.add_argument("--hover", default=None, help="node id to hover before the shot")
    p.add_argument("--tokens", type=int, default=4096, help="held-out tokens cached per SAE (hover examples)")
    a = p.parse_args()
    cmd = [sys.executable, "-m", "saelab", "serve", *a.sae, "--graphs", a.graphs, "--port", str(PORT)]
    server = subprocess.Popen(cmd + ["--tokens", str(a.tokens), "--threads", "1"])
    try:
        base = f"http://127.0.0.1:{PORT}"
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/graphs", timeout=2)
                break
            except OSError:
                time.sleep(1)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 2100, "height": 900})
            page.goto(f"{base}/graph/{a.slug}")
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            if a.hover:
                page.locator(f"#graph .node[data-id='{a.hover}']").hover()
                time.sleep(1.0)
            page.screenshot(path=a.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
