"""Commands `steer`, `dashboard`, `serve`: see, search and steer the features of an SAE. Options:
SteerConfig (features/steering.py), DashboardConfig (view/static_site.py), ServeConfig (view/app_server.py)."""

from __future__ import annotations

import argparse

from ..options import add_config_command, build_config

STEER_HELP = """Generate from a prompt with features clamped or added, next to the unsteered model (same seed).
Examples:
  saelab steer RUN/SAE --prompt "I went to the" --clamp 1234=1x        (1 x the feature's max activation)
  saelab steer RUN/SAE --prompt "I went to the" --clamp 1234=1x --sweep   (0.5x 1x 2x 4x side by side)
  saelab steer RUN/SAE --prompt "Hello" --add 77=20 --clamp 5=0          (add 20 to 77; switch 5 off)
  saelab steer --model embedded --hookpoint model.layers.6 --prompt "I think" \\
      --positive "I love this" "What a joy" --negative "I hate this" "What a pain" --scale 4
"""


def run_steer(a) -> None:
    from ..features.steering import SteerConfig
    from ..view.steer_run import steer

    def show(what: str, r: dict) -> None:
        print(f"\nprompt: {r['prompt']!r}\n--- unsteered ---\n{r['unsteered']}")
        for v in r["sweep"]:
            flag = f"   [degenerate: {v['degenerate']}]" if v["degenerate"] else ""
            print(f"--- steered x{v['strength']:g} ({v['steering']}){flag} ---\n{v['text']}")

    steer(build_config(SteerConfig, a, a.config), on_result=show)


def run_dashboard(a) -> None:
    from ..view.static_site import DashboardConfig, build_dashboard

    out, n = build_dashboard(build_config(DashboardConfig, a, a.config))
    print(f"saelab: wrote {n} feature pages; open {out / 'index.html'}")


def run_serve(a) -> None:
    from ..view.app_server import ServeConfig, serve_folders

    serve_folders(build_config(ServeConfig, a, a.config))


def register(sub) -> None:
    from ..features.steering import SteerConfig
    from ..view.app_server import ServeConfig
    from ..view.static_site import DashboardConfig

    p = add_config_command(
        sub,
        "steer",
        SteerConfig,
        run_steer,
        help="generate with features clamped/added (steered vs unsteered, same seed)",
        description=STEER_HELP,
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_command(
        sub, "dashboard", DashboardConfig, run_dashboard, help="static HTML dashboards (one page per feature + index)"
    )
    add_config_command(
        sub, "serve", ServeConfig, run_serve, help="local web app: search, feature pages, fire-on-text, steering"
    )
