"""Command `hookpoints`: list the hookable sites of a model. Options: HookpointsConfig
(activations/hookpoints.py)."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_hookpoints(a) -> None:
    from ..activations.hookpoints import HookpointsConfig, list_hookpoints

    name, sites = list_hookpoints(build_config(HookpointsConfig, a, a.config))
    print(
        f"# {name}: {len(sites)} hookpoints (name, kind, width). Any module name also works; "
        f"append ':input' for a module's input."
    )
    for site, kind, width in sites:
        print(f"{site}\t{kind}\t{width}")


def register(sub) -> None:
    from ..activations.hookpoints import HookpointsConfig

    add_config_command(
        sub, "hookpoints", HookpointsConfig, cmd_hookpoints, help="list the hookable sites of a model with their widths"
    )
