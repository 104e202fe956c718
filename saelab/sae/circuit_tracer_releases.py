"""`saelab pull` of the public transcoder sets circuit-tracer uses (releases.json entries of format
`circuit-tracer`): a whole replacement model per release, written as a replacement folder.

Two shapes of release (docs/research/circuits.md, "Public releases"):
  - a repo in circuit-tracer's own layout (config.yaml + layer_{l}.safetensors, or W_enc_{l} / W_dec_{l}):
    mntss/transcoder-Llama-3.2-1B, mntss/clt-llama-3.2-1b-524k. Read with foreign_circuit_tracer.read_ct.
  - Gemma Scope's transcoders (`"gemma"` in circuit-tracer): circuit-tracer's config lists one `params.npz` of
    google/gemma-scope-2b-pt-transcoders per layer (configs/gemmascope-l0-0.yaml); the registry entry carries
    that list (`transcoders`) and the hooks (`hookpoint`: "INPUT_HOOK->OUTPUT_HOOK"). Each npz holds W_enc
    [d_model, d_sae] (circuit-tracer transposes it on load), W_dec [d_sae, d_model], b_enc, b_dec, threshold
    (JumpReLU). They read ln2.hook_normalized, so the model's MLP norms fold in (`--model`, default the
    release's model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .foreign_circuit_tracer import PLT_KIND, CtLayer, CtSet, read_ct


def read_npz_layer(path: Path) -> CtLayer:
    """One Gemma Scope transcoder `params.npz` -> circuit-tracer's orientation (W_enc [d_sae, d_model])."""
    if not path.exists():
        raise UserError(f"{path} does not exist (a layer file of the release)")
    try:
        with np.load(path) as z:
            t = {k.lower(): torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npz file ({e})") from e
    if "w_enc" not in t or t["w_enc"].dim() != 2:
        raise UserError(f"{path} lacks a 2-d W_enc (has {', '.join(sorted(t))}): not a Gemma Scope file")
    d, n = t["w_enc"].shape
    for name, shape in {"w_dec": (n, d), "b_enc": (n,), "b_dec": (d,), "threshold": (n,)}.items():
        if name not in t or tuple(t[name].shape) != shape:
            got = tuple(t[name].shape) if name in t else "missing"
            raise UserError(f"{path}: {name} is {got}, expected {shape}")
    return CtLayer(t["w_enc"].t().contiguous(), t["b_enc"], t["w_dec"], t["b_dec"], t["threshold"])


def read_release_set(folder: Path, model_name: str, transcoders: list[str] | None, hooks: str) -> CtSet:
    """The release's files under `folder` (a download or a local copy of the repo) -> CtSet."""
    folder = Path(folder)
    if not transcoders:
        return read_ct(folder)
    if "->" not in hooks:
        raise UserError(f"release entry: hookpoint {hooks!r} must be 'INPUT_HOOK->OUTPUT_HOOK' (circuit-tracer names)")
    layers = [read_npz_layer(folder / p) for p in transcoders]
    shape = tuple(layers[0].W_enc.shape)
    for i, lay in enumerate(layers):
        if tuple(lay.W_enc.shape)[1] != shape[1]:
            raise UserError(f"{folder / transcoders[i]}: d_model {lay.W_enc.shape[1]}, layer 0's is {shape[1]}")
    inp, out = hooks.split("->", 1)
    return CtSet(PLT_KIND, model_name, inp, out, layers, "jumprelu")


def download_release(repo: str, transcoders: list[str] | None) -> Path:
    """The release's files from the hub (config.yaml + safetensors, or the listed npz files) -> local repo root."""
    from huggingface_hub import snapshot_download

    patterns = list(transcoders) if transcoders else ["config.yaml", "*.safetensors"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - network, auth (gated repos) and missing-repo errors all end here
        raise UserError(f"could not download {repo} from the Hugging Face hub ({type(e).__name__}: {e})") from e
