"""`saelab train --layers all|0-29|0,4,8`: the MLP transcoder sites of chosen layers, from the model's
family adapter (families.py `mlp_in_site` -> `mlp_out_site`), so a replacement model is one flag on any
supported family, not 30 hand-written hookpoints.

`parse_layers` checks the spelling (config_checks, before anything loads); `layer_plan` reads the model's
config (on disk, or its config.json alone from the hub) and its module names on the meta device, checks
the range and gives the sites. With a per-site type one transcoder per layer trains from one forward (a
PLT set); a multi-site type (--arch clt) joins them into one dictionary (sources.join_crosscoder_sites).
"""

from __future__ import annotations

import re

from ..errors import UserError
from ..sae.replacement import LayerPlan

_SPELLING = "--layers takes all, a range 0-29, or a list 0,4,8"


def parse_layers(spec: str) -> list[int] | None:
    """'all' -> None (every layer); '0-29' or '0,4,8' (mixed: '0-3,8') -> sorted unique layers.
    A malformed spec is a UserError naming the part that is wrong."""
    s = spec.strip().lower()
    if s == "all":
        return None
    if not s:
        raise UserError(f"--layers is empty; {_SPELLING}")
    out: set[int] = set()
    for part in s.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(f"--layers {spec!r}: {part!r} is not a layer number or range; {_SPELLING}")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise UserError(f"--layers {spec!r}: the range {part!r} runs backwards (write {hi}-{lo})")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _model_config(spec: str):
    """The model's transformers config: on disk when it is (no network), else its config.json from the hub."""
    from .sources import local_model_config

    conf = local_model_config(spec)
    if conf is not None:
        return conf
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - any failure to read a config is the same message
        raise UserError(f"--layers needs model {spec!r}'s config to find its MLP sites: {e}") from e


def layer_plan(model_spec: str, spec: str) -> LayerPlan:
    """The sites of `spec`'s layers in `model_spec`; layers out of range fail here, before weights load."""
    from ..families import family_of
    from ..models import model_skeleton

    wanted = parse_layers(spec)
    conf = _model_config(model_spec)
    skeleton = model_skeleton(conf)
    if skeleton is None:
        raise UserError(f"--layers: transformers cannot build model {model_spec!r} from its config to find its layers")
    fam = family_of(skeleton)
    n = len(skeleton.get_submodule(fam.blocks))
    layers = list(range(n)) if wanted is None else wanted
    bad = [x for x in layers if x >= n]
    if bad:
        raise UserError(f"--layers {spec}: layer {bad[0]} is out of range; {model_spec} has {n} layers (0-{n - 1})")
    return LayerPlan(
        tuple(layers),
        fam.name,
        n,
        tuple(fam.mlp_in_site(x) for x in layers),
        tuple(fam.mlp_out_site(x) for x in layers),
    )
