"""The local web app (`saelab serve`): server.py (routes, jobs), page.py (the one-page UI)."""
