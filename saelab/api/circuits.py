"""Attribution graphs from Python: `saelab attribute` as a function over its config dataclass.

    graph = saelab.attribute(saelab.AttributeConfig(replacement="runs/plt", prompt="def add(a, b):", out="graphs/add"))
    graph.n_nodes, graph.feature(0), graph.adjacency    # [n_nodes, n_nodes]: [target, source] = direct effect

The command (commands/circuits.py) builds the same config and calls these functions.
"""

from __future__ import annotations

from pathlib import Path

from ..circuits.config import AttributeConfig
from ..circuits.graph import Graph
from ..errors import UserError

__all__ = ["AttributeConfig", "Graph", "attribute", "validate_attribution"]


def attribute(cfg: AttributeConfig, progress: bool = True) -> Graph:
    """`saelab attribute REPLACEMENT --prompt TEXT --out DIR`: the attribution graph of `cfg.prompt` through
    the replacement model (per-layer transcoders or a cross-layer transcoder), written to `cfg.out`
    (graph.safetensors, graph.json, the Neuronpedia JSON) and returned as read back from there: nodes
    (features, error nodes, tokens, targets) and `adjacency` [n_nodes, n_nodes] of direct effects in logit
    units. `progress`: a bar on stderr."""
    from ..circuits.graph import load_graph
    from ..circuits.run import attribute_prompt

    if cfg.validate_prompts:
        raise UserError("validate_prompts is set: call saelab.validate_attribution(cfg), which writes N graphs")
    return load_graph(attribute_prompt(cfg, progress=progress))


def validate_attribution(cfg: AttributeConfig) -> Path:
    """`saelab attribute REPLACEMENT --validate-prompts N --out DIR`: the graphs of N built-in corpus prompts,
    each graph's predicted effects checked against real ablations; returns the folder of the report."""
    from ..circuits.run import validate_graphs

    if not cfg.validate_prompts:
        raise UserError("validate_attribution needs validate_prompts (the number of corpus prompts) > 0")
    return Path(validate_graphs(cfg))
