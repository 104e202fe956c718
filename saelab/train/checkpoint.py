"""Checkpoints: every SAE's weights, optimiser moments and dead-latent counters in one
safetensors file (atomic rename), with the run position as JSON metadata. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..checksums import tensors_sha256
from ..errors import UserError
from ..storage import read_tensors, write_tensors

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(folder: Path, members: list, meta: dict) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for m in members:
        for k, v in m.sae.state_dict().items():
            tensors[f"{m.name}/sae/{k}"] = v.detach().cpu()
        for i, p in enumerate(m.sae.parameters()):
            st = m.opt.state.get(p, {})
            for k, v in st.items():
                tensors[f"{m.name}/opt/{i}/{k}"] = v.detach().cpu() if torch.is_tensor(v) else torch.tensor(v)
        tensors[f"{m.name}/since_fired"] = m.since_fired.cpu()
    path = Path(folder) / CHECKPOINT
    meta = meta | {"tensors_sha256": tensors_sha256(tensors)}  # checked by load_checkpoint
    write_tensors(path, tensors, metadata={"saelab": json.dumps(meta)})
    return path


def read_checkpoint_meta(folder: Path) -> dict:
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        raise UserError(f"--resume: no checkpoint in {folder} (nothing to resume; drop --resume to start fresh)")
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["saelab"])
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"checkpoint {path} is corrupt or truncated ({e}); delete it to start over") from e


def load_checkpoint(folder: Path, members: list) -> None:
    tensors = read_tensors(Path(folder) / CHECKPOINT)
    expected = read_checkpoint_meta(folder).get("tensors_sha256")  # none in checkpoints written before
    if expected is not None and tensors_sha256(tensors) != expected:
        raise UserError(
            f"checkpoint {Path(folder) / CHECKPOINT} is corrupt: its tensors' sha256 differs from the one recorded "
            f"in it when it was written (a damaged disk or copy); delete it to start over"
        )
    for m in members:
        prefix = f"{m.name}/sae/"
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            raise UserError(f"checkpoint has no state for SAE {m.name}: it was written by a different configuration")
        m.sae.load_state_dict(sd)
        for i, p in enumerate(m.sae.parameters()):
            pre = f"{m.name}/opt/{i}/"
            st = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
            if st:  # Adam keeps `step` on the CPU and its moments beside the parameter
                m.opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in st.items()}
        m.since_fired.copy_(tensors[f"{m.name}/since_fired"])
