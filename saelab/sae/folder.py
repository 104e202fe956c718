"""The SAE folder: `cfg.json` + `sae_weights.safetensors`, laid out so SAELens can load it, and
the typed object a loaded folder becomes (`SaeFolder`: the dictionary and how it was made).

cfg.json keys: architecture (topk | jumprelu | standard), d_in, d_sae, k (topk), dtype,
normalize_activations ("none": our input scaling is folded into the weights),
apply_b_dec_to_input, metadata{model_name, hook_name, context_size, prepend_bos}, and our own
keys under `saelab`: config (the SaeConfig), the provenance (model_spec, corpus, text_field,
heldout_fraction, data_fingerprint, sink, training_tokens, loss and its coefficients), training
details (lr, steps, seed, train_stats) and the format version. SAELens and sparsify folders load
through the same `open_sae` (foreign.py converts them).

Why the provenance: every command that needs the SAE's model and held-out data (eval, cache,
dashboard, serve, steer, compare, ...) reopens them with `SaeFolder.open_data`, so an SAE is
evaluated on exactly the rows it never trained on, and on another corpus only when asked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..sinks import SinkConfig
from ..storage import read_json, read_tensors, write_json, write_tensors
from .base import SaeConfig, SparseCoder
from .foreign import load_foreign
from .layout import CFG, FORMAT_VERSION, WEIGHTS, cfg_json
from .registry import build_sae

DEFAULT_HELDOUT_FRACTION = 0.05  # what folders written before provenance was recorded were trained with


@dataclass
class Provenance:
    """How a dictionary was made: what it takes to reopen its model and its held-out data."""
    model_spec: str = "embedded"                 # as given to --model (embedded | folder | .gguf | hub id)
    model_name: str = ""                         # cfg.json metadata.model_name
    corpus: str = "builtin"
    text_field: str = "text"
    context: int = 256
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
    data_fingerprint: str | None = None          # of the token rows it trained on (None: unknown)
    sink: SinkConfig = field(default_factory=SinkConfig)
    training_tokens: int | None = None           # None: not trained by saelab (imported)
    objective: dict = field(default_factory=lambda: {"loss": "local"})  # loss and its coefficients

    def to_block(self) -> dict:
        """The keys under cfg.json `saelab` (flat, as earlier versions wrote them)."""
        return {"model_spec": self.model_spec, "corpus": self.corpus, "text_field": self.text_field,
                "heldout_fraction": self.heldout_fraction, "data_fingerprint": self.data_fingerprint,
                "sink": asdict(self.sink), "training_tokens": self.training_tokens, **self.objective}

    @classmethod
    def from_cfg(cls, cfg: dict) -> "Provenance":
        ours, meta = cfg.get("saelab", {}), cfg.get("metadata", {})
        objective = {k: ours[k] for k in ("loss", "kl_coeff", "downstream_coeff", "downstream_layers") if k in ours}
        return cls(model_spec=ours.get("model_spec") or "embedded", model_name=meta.get("model_name", ""),
                   corpus=ours.get("corpus") or "builtin", text_field=ours.get("text_field", "text"),
                   context=int(meta.get("context_size") or 256),
                   heldout_fraction=float(ours.get("heldout_fraction", DEFAULT_HELDOUT_FRACTION)),
                   data_fingerprint=ours.get("data_fingerprint"),
                   sink=SinkConfig(**ours["sink"]) if ours.get("sink") else SinkConfig(),
                   training_tokens=ours.get("training_tokens"), objective=objective or {"loss": "local"})


@dataclass
class SaeFolder:
    """A loaded SAE folder: the dictionary (on raw activations), its provenance, and cfg.json."""
    path: Path
    sae: SparseCoder
    provenance: Provenance
    cfg: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sites(self) -> list[str]:
        c = self.sae.cfg
        return [c.hookpoint] + ([c.out_hookpoint] if c.out_hookpoint else [])


def save_sae(sae: SparseCoder, folder: Path, provenance: Provenance, extra: dict | None = None) -> Path:
    """Write the folder (weights with the input scaling folded in, then cfg.json, each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    block = provenance.to_block() | (extra or {})
    write_tensors(folder / WEIGHTS, sae.folded_state())
    write_json(folder / CFG, cfg_json(sae, provenance.model_name, provenance.context, block))
    return folder


def open_sae(folder: Path, device: str = "cpu") -> SaeFolder:
    """Load any SAE folder (saelab, SAELens, sparsify); errors name the file and what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not an SAE folder (expected a folder with {CFG} and {WEIGHTS})")
    cfg = read_json(folder / CFG)
    ours = cfg.get("saelab")
    if not ours or "config" not in ours:  # SAELens / sparsify folders (docs/SCALE.md)
        sae, cfg = load_foreign(folder, device)
        return SaeFolder(folder, sae, Provenance.from_cfg(cfg), cfg)
    if ours.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{folder} uses SAE format version {ours['format_version']}; this saelab reads up to {FORMAT_VERSION}")
    sae_cfg = SaeConfig.from_dict(ours["config"])
    sae = build_sae(sae_cfg)
    tensors = read_tensors(folder / WEIGHTS)
    expected = {"W_enc": (sae_cfg.d_in, sae_cfg.d_sae), "b_enc": (sae_cfg.d_sae,),
                "W_dec": (sae_cfg.d_sae, sae_cfg.d_out), "b_dec": (sae_cfg.d_out,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{folder / WEIGHTS} lacks tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise UserError(f"{folder / WEIGHTS}: {name} has shape {tuple(tensors[name].shape)}, cfg.json says {shape}")
    if sae_cfg.arch in ("jumprelu", "batchtopk") and "threshold" not in tensors:
        raise UserError(f"{folder / WEIGHTS} lacks the `threshold` tensor a {sae_cfg.arch} SAE needs")
    sae.load_folded({k: v.to(torch.float32) for k, v in tensors.items()})
    return SaeFolder(folder, sae.to(device).eval(), Provenance.from_cfg(cfg), cfg)


def load_sae(folder: Path, device: str = "cpu") -> tuple[SparseCoder, dict]:
    """(dictionary, cfg.json) of a folder: `open_sae` for callers that need only these two."""
    f = open_sae(folder, device)
    return f.sae, f.cfg
