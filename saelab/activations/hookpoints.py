"""`saelab hookpoints`: where activations can be read in a model (the sites `train --hookpoints`,
`cache-activations` and `steer --hookpoint` accept), each with its kind and width."""

from __future__ import annotations

from dataclasses import dataclass

from ..models import candidate_hookpoints, hookpoint_widths, load_model
from ..option_checks import check_types
from ..options import model_option


@dataclass
class HookpointsConfig:
    """`saelab hookpoints`: which model to list."""

    model: str = model_option()

    def validate(self) -> None:
        check_types(self)


def list_hookpoints(cfg: HookpointsConfig) -> tuple[str, list[tuple[str, str, int]]]:
    """-> (model name, [(hookpoint, kind, width)]) in forward order."""
    cfg.validate()
    lm = load_model(cfg.model)
    sites = candidate_hookpoints(lm.model)
    widths = hookpoint_widths(lm.model, [n for n, _ in sites])
    return lm.name, [(name, kind, widths[name]) for name, kind in sites]
