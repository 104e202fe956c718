"""Feature dashboards: per-feature data (features.py), HTML (render.py), static export (static.py)."""
