"""What makes two trained dictionaries "the same configuration but for the seed" (a SEED GROUP in
`saelab bench`): the folder's cfg.json `saelab` block (the dictionary's config, provenance, objective,
learning rate, steps, --init-from) and, when the folder sits in its run folder, the run's manifest.json
`config` (every `saelab train` option), both without what does not change what is trained.

Left out: the seed itself, where the run was written (--out), --seeds (a `--seeds N` run trains plain
runs), the options a resume may change (resume_identity.FREE_OPTIONS: threads, device, checkpoints, ...),
and the run's lists of hookpoints / k / sparsity / lr (one run trains several dictionaries: each folder's
own values are in its cfg.json). An option at its default and an option the manifest lacks (a run from an
older saelab) are the same. So folders trained by `saelab train --seeds 3` and by three plain
`saelab train --seed S --out ...` commands group alike: grouping reads configurations, never folder names.
A folder without a saelab block (SAELens, sparsify) has no identity and is never grouped."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..storage import read_json
from .config import TrainConfig
from .resume_identity import FREE_OPTIONS, _defaults, defaults_as_none

RUN_IGNORED = (*FREE_OPTIONS, "seed", "seeds", "out", "hookpoints", "layers", "k", "sparsity_coeff", "lr")
SAE_IGNORED = ("seed", "train_stats", "checksums", "saelab_version", "format_version")
PATHS = ("from_activations", "init_from", "corpus", "model", "model_b")  # compared as normalised paths


def _norm(options: dict) -> dict:
    return {k: os.path.normpath(v) if k in PATHS and isinstance(v, str) and v else v for k, v in options.items()}


def run_config(folder: Path) -> dict | None:
    """The training options of the run that wrote SAE folder `folder` (its parent's manifest.json lists it),
    or None when the folder is not inside its run folder."""
    path = Path(folder).parent / "manifest.json"
    if not path.is_file():
        return None
    try:
        m = read_json(path)
    except Exception:  # noqa: BLE001 - an unreadable manifest is no manifest: the cfg.json alone decides
        return None
    saes = m.get("saes") if isinstance(m, dict) else None
    if m.get("command") != "train" or not isinstance(saes, dict) or Path(folder).name not in saes:
        return None
    return m.get("config") if isinstance(m.get("config"), dict) else None


def training_identity(folder: Path, cfg_json: dict) -> tuple[str | None, bool]:
    """(identity, whether the run's manifest was read): equal identities = the same training configuration
    except the seed. None: not a saelab-trained folder."""
    ours = cfg_json.get("saelab")
    if not isinstance(ours, dict) or "config" not in ours or ours.get("training_tokens") is None:
        return None, False
    ident = {
        "cfg": {k: v for k, v in cfg_json.items() if k not in ("saelab", "device")},  # device: where it ran
        "saelab": _norm({k: v for k, v in ours.items() if k not in SAE_IGNORED}),
    }
    run = run_config(folder)
    if run is not None:
        # an option at its default counts as not given: a run from a saelab that lacked it groups alike
        defaults = _defaults(TrainConfig)
        given = {k: v for k, v in run.items() if k not in RUN_IGNORED and not (k in defaults and v == defaults[k])}
        ident["run"] = _norm(defaults_as_none(given))
    return json.dumps(ident, sort_keys=True, default=str), run is not None


def seed_of(cfg_json: dict) -> int | None:
    """The --seed a saelab folder was trained with (cfg.json saelab.seed), or None."""
    s = (cfg_json.get("saelab") or {}).get("seed")
    return s if isinstance(s, int) and not isinstance(s, bool) else None
