"""Command `attribute`: the attribution graph of a prompt through a replacement model (circuits/run.py).
Options: AttributeConfig (circuits/config.py)."""

from __future__ import annotations

import argparse

from ..options import add_config_command, build_config

ATTRIBUTE_HELP = """The attribution graph of a prompt: which features, at which layers and positions, carried the
replacement model to its next token(s); pruned by influence, scored, and written as a graph folder with the
circuit-tracer / Neuronpedia JSON. Examples:
  saelab attribute RUN --prompt "def add(a, b):\\n    return a +" --out graphs/add
  saelab attribute RUN --prompt "The capital of France is" --target " Paris" --out graphs/paris
  saelab attribute RUN --prompt "x = 1; y = x" --target-diff " +" " -" --out graphs/diff
  saelab attribute RUN --prompt "one two three" --target-feature 3:-1:1207 --out graphs/feat
  saelab attribute RUN --validate-prompts 20 --out graphs/validation   # graph predictions vs ablations
"""


def run_attribute(a) -> None:
    from ..api.circuits import AttributeConfig, attribute, validate_attribution

    cfg = build_config(AttributeConfig, a, a.config)
    (validate_attribution if cfg.validate_prompts else attribute)(cfg)


def register(sub) -> None:
    from ..circuits.config import AttributeConfig

    p = add_config_command(
        sub,
        "attribute",
        AttributeConfig,
        run_attribute,
        help="attribution graph of a prompt through a replacement model (+ Neuronpedia JSON)",
        description=ATTRIBUTE_HELP,
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
