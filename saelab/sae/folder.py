"""The SAE folder: `cfg.json` + `sae_weights.safetensors`, laid out so SAELens can load it, and
the typed object a loaded folder becomes (`SaeFolder`: the dictionary and how it was made).

cfg.json keys: architecture (topk | jumprelu | standard | gated), d_in, d_sae, k (topk), dtype,
normalize_activations ("none": our input scaling is folded into the weights),
apply_b_dec_to_input, metadata{model_name, hook_name, context_size, prepend_bos}, and our own
keys under `saelab`: config (the SaeConfig), the provenance (model_spec, corpus, text_field,
heldout_fraction, data_fingerprint, sink, training_tokens, loss and its coefficients), training
details (lr, steps, seed, train_stats) and the format version. SAELens and sparsify folders load
through the same `open_sae` (foreign.py converts them).

Why the provenance: every command that needs the SAE's model and held-out data (eval, eval-e2e,
sweep, compare, scaling, cache, dashboard, serve, steer) reopens them with `SaeFolder.open_data`
(several folders at once: `open_shared_data`, which refuses folders that disagree), so an SAE is
evaluated on exactly the rows it never trained on, and on another corpus only when asked. The rows'
fingerprint is compared with the recorded one: another corpus prints a note, changed rows of the
same corpus a warning, and `SaeData.matches` says which (metrics.json: `data_matches_training`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..checksums import check_sha256, file_sha256
from ..data import TokenRows, load_token_rows
from ..errors import UserError
from ..models import LoadedModel, hookpoint_widths, load_model, resolve_hookpoints
from ..option_checks import check_types
from ..sinks import SinkConfig
from ..storage import read_json, read_tensors, write_json, write_tensors
from .base import SaeConfig, SparseCoder
from .crosscoder import sites as crosscoder_sites
from .foreign import load_foreign
from .layout import CFG, FORMAT_VERSION, WEIGHTS, cfg_json
from .registry import ARCHITECTURES, build_sae, multi_site

DEFAULT_HELDOUT_FRACTION = 0.05  # what folders written before provenance was recorded were trained with


@dataclass
class Provenance:
    """How a dictionary was made: what it takes to reopen its model and its held-out data."""

    model_spec: str = "embedded"  # as given to --model (embedded | folder | .gguf | hub id)
    model_name: str = ""  # cfg.json metadata.model_name
    corpus: str = "builtin"
    text_field: str = "text"
    context: int = 256
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
    data_fingerprint: str | None = None  # of the token rows it trained on (None: unknown)
    sink: SinkConfig = field(default_factory=SinkConfig)
    training_tokens: int | None = None  # None: not trained by saelab (imported)
    objective: dict = field(default_factory=lambda: {"loss": "local"})  # loss and its coefficients
    model_b: str | None = None  # model diffing: the second model (model_pair.py), as given to --model-b

    def to_block(self) -> dict:
        """The keys under cfg.json `saelab` (flat, as earlier versions wrote them)."""
        return {
            "model_spec": self.model_spec,
            "corpus": self.corpus,
            "text_field": self.text_field,
            "heldout_fraction": self.heldout_fraction,
            "data_fingerprint": self.data_fingerprint,
            "sink": asdict(self.sink),
            "training_tokens": self.training_tokens,
            **self.objective,
            **({"model_b": self.model_b} if self.model_b else {}),
        }

    @classmethod
    def from_cfg(cls, cfg: dict) -> Provenance:
        ours, meta = cfg.get("saelab", {}), cfg.get("metadata", {})
        objective = {k: ours[k] for k in ("loss", "kl_coeff", "downstream_coeff", "downstream_layers") if k in ours}
        return cls(
            model_spec=ours.get("model_spec") or "embedded",
            model_name=meta.get("model_name", ""),
            corpus=ours.get("corpus") or "builtin",
            text_field=ours.get("text_field", "text"),
            context=int(meta.get("context_size") or 256),
            heldout_fraction=float(ours.get("heldout_fraction", DEFAULT_HELDOUT_FRACTION)),
            data_fingerprint=ours.get("data_fingerprint"),
            sink=SinkConfig(**ours["sink"]) if ours.get("sink") else SinkConfig(),
            training_tokens=ours.get("training_tokens"),
            objective=objective or {"loss": "local"},
            model_b=ours.get("model_b"),
        )


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

    def open_model(self, device: str = "cpu", model: str | None = None, dtype: str = "float32") -> LoadedModel:
        """The model it was trained on (or `model`), without data (for commands that need only the model)."""
        return load_model(model or self.provenance.model_spec, device=device, dtype=dtype)

    def open_data(self, device: str = "cpu", model: str | None = None, corpus: str | None = None) -> SaeData:
        """Its model and token rows, split with the recorded context, held-out fraction and text field,
        so `rows.heldout_rows` are rows it never trained on; see `open_shared_data`."""
        return open_shared_data([self], device, model, corpus)


def unique_names(names: list[str]) -> list[str]:
    """Folder names made distinct in order (`NAME`, `NAME_2`, ...): runs of one sweep share names such as
    model.layers.6-topk-k32, and the commands that key results by name must not merge two of them."""
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def save_sae(sae: SparseCoder, folder: Path, provenance: Provenance, extra: dict | None = None) -> Path:
    """Write the folder (weights with the input scaling folded in, then cfg.json, each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / WEIGHTS, sae.folded_state())
    # the weights' sha256, checked by open_sae (last: never an older folder's value passed in `extra`)
    block = provenance.to_block() | (extra or {}) | {"checksums": {WEIGHTS: file_sha256(folder / WEIGHTS)}}
    write_json(folder / CFG, cfg_json(sae, provenance.model_name, provenance.context, block))
    return folder


def open_sae(folder: Path, device: str = "cpu") -> SaeFolder:
    """Load any SAE folder (saelab, SAELens, sparsify); errors name the file and what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not an SAE folder (expected a folder with {CFG} and {WEIGHTS})")
    cfg = read_json(folder / CFG)
    if not isinstance(cfg, dict):
        raise UserError(f"{folder / CFG} must hold an object, not a {type(cfg).__name__}")
    ours = cfg.get("saelab")
    if not ours or not isinstance(ours, dict) or "config" not in ours:  # SAELens / sparsify folders (docs/SCALE.md)
        sae, cfg = load_foreign(folder, device)
        refuse_non_finite(folder / WEIGHTS, sae.state_dict())
        return SaeFolder(folder, sae, Provenance.from_cfg(cfg), cfg)
    if ours.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{folder} uses SAE format version {ours['format_version']}; this saelab reads up to {FORMAT_VERSION}"
        )
    sae_cfg = _sae_config(folder / CFG, cfg)
    sae = build_sae(sae_cfg)
    tensors = read_tensors(folder / WEIGHTS)  # a truncated file: "corrupt or truncated" here
    refuse_non_finite(folder / WEIGHTS, tensors)  # NaN weights: named by tensor
    sums = ours.get("checksums")  # none in folders written before checksums: loaded unchecked
    check_sha256(folder / WEIGHTS, sums.get(WEIGHTS) if isinstance(sums, dict) else None, str(folder / CFG))
    expected = type(sae).folded_shapes(sae_cfg)
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{folder / WEIGHTS} lacks tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise UserError(f"{folder / WEIGHTS}: {name} has shape {tuple(tensors[name].shape)}, cfg.json says {shape}")
    missing = sorted(set(sae.extra_state_tensors()) - set(tensors))
    if missing:
        raise UserError(
            f"{folder / WEIGHTS} lacks the {', '.join(f'`{m}`' for m in missing)} tensor(s) a {sae_cfg.arch} SAE needs"
        )
    sae.load_folded({k: v.to(torch.float32) for k, v in tensors.items()})
    return SaeFolder(folder, sae.to(device).eval(), Provenance.from_cfg(cfg), cfg)


def _sae_config(path: Path, cfg: dict) -> SaeConfig:
    """saelab.config of a cfg.json, typed and consistent (arch known, sizes positive, k <= d_sae, the
    SAELens keys d_in / d_sae agreeing with it), or a UserError naming the key."""
    d = cfg["saelab"]["config"]
    if not isinstance(d, dict):
        raise UserError(f"{path}: saelab.config must be an object, not a {type(d).__name__}")
    missing = [k for k in ("arch", "d_in", "d_sae", "hookpoint") if k not in d]
    if missing:
        raise UserError(f"{path}: saelab.config lacks {', '.join(missing)}")
    c = SaeConfig.from_dict(d)
    check_types(c, where=f"{path}: saelab.config")
    if c.arch not in ARCHITECTURES:
        raise UserError(
            f"{path}: unknown architecture {c.arch!r} (saelab.config.arch); "
            f"this saelab knows {', '.join(ARCHITECTURES)}"
        )
    for key in ("d_in", "d_sae", "d_out"):
        if getattr(c, key) < 1:
            raise UserError(f"{path}: saelab.config.{key} must be positive, got {getattr(c, key)}")
        if key in cfg and cfg[key] != getattr(c, key):
            raise UserError(f"{path}: {key} {cfg[key]!r} contradicts saelab.config.{key} {getattr(c, key)}")
    if not c.is_transcoder and c.d_out != c.d_in:
        raise UserError(
            f"{path}: saelab.config.d_out {c.d_out} differs from d_in {c.d_in} but there is no out_hookpoint"
        )
    if c.k is not None and not 1 <= c.k <= c.d_sae:
        raise UserError(f"{path}: k={c.k} must be between 1 and d_sae={c.d_sae}")
    if ARCHITECTURES[c.arch].capabilities.uses_k and c.k is None:
        raise UserError(f"{path}: a {c.arch} SAE needs k in saelab.config")
    return c


def refuse_non_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """NaN or inf weights are refused at load, naming the tensor (training stops on NaN itself)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise UserError(
                f"{path}: tensor {name} holds {n} NaN/inf value(s); the weights are corrupt (or training diverged)"
            )


def load_sae(folder: Path, device: str = "cpu") -> tuple[SparseCoder, dict]:
    """(dictionary, cfg.json) of a folder: `open_sae` for callers that need only these two."""
    f = open_sae(folder, device)
    return f.sae, f.cfg


# ---------------------------------------------------------------- the model and data of SAE folders


@dataclass
class SaeData:
    """What `open_data` / `open_shared_data` open: `lm, rows = folder.open_data()` unpacks the two."""

    lm: LoadedModel
    rows: TokenRows
    provenance: Provenance  # the values used: the folders' records, overrides applied
    matches: list[bool | None]  # per folder: True = the rows it trained on (held-out rows unseen),
    # False = another corpus or changed rows, None = unknown (nothing recorded)

    def __iter__(self):
        return iter((self.lm, self.rows))

    @property
    def matches_training(self) -> bool | None:
        """One answer for all folders: False if any differs, None if any is unknown, else True."""
        if any(m is False for m in self.matches):
            return False
        return None if not self.matches or None in self.matches else True


_OVERRIDABLE = {"model_spec": "--model", "corpus": "--corpus", "context": "--context"}


def _agreed(folders: list[SaeFolder], key: str):
    values = [getattr(f.provenance, key) for f in folders]
    if len({str(v) for v in values}) > 1:
        seen: dict[str, str] = {}
        for f, v in zip(folders, values):
            seen.setdefault(str(v), f"{v!r} ({f.path})")
        what = ", ".join(seen.values())
        flag = _OVERRIDABLE.get(key)
        raise UserError(
            f"these SAE folders disagree on {key.replace('_', ' ')}: {what}; use them separately"
            + (f" or pass {flag}" if flag else "")
        )
    return values[0]


def shared_provenance(
    folders: list[SaeFolder], model: str | None = None, corpus: str | None = None, context: int | None = None
) -> Provenance:
    """The model, corpus, context, held-out fraction and text field the folders all record (defaults
    when there are none), with overrides applied; a UserError names a value they disagree on."""
    if not folders:
        base = Provenance()
    else:
        keys = ("heldout_fraction", "text_field") + tuple(
            k for k, v in (("model_spec", model), ("corpus", corpus), ("context", context)) if v is None
        )
        base = replace(folders[0].provenance, **{k: _agreed(folders, k) for k in keys})
        fps = {f.provenance.data_fingerprint for f in folders}
        base.data_fingerprint = fps.pop() if len(fps) == 1 else None
    return replace(
        base,
        model_spec=str(model or base.model_spec),
        model_name="" if model else base.model_name,
        corpus=str(corpus or base.corpus),
        context=int(context or base.context),
    )


def _same_source(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def check_fits(folders: list[SaeFolder], model) -> None:
    """Every folder's site(s) exist in `model` with the SAE's widths."""
    for f in folders:
        c = f.sae.cfg
        if multi_site(c):  # one dictionary over several equal-width sites (sae/crosscoder.py, sae/clt.py)
            sides = [(crosscoder_sites(c), c.d_in)] + (
                [(c.out_hookpoint.split("+"), c.d_out)] if c.out_hookpoint else []
            )
            for names, width in sides:
                resolve_hookpoints(model, names)
                w = hookpoint_widths(model, names)
                if any(w[h] * len(names) != width for h in names):
                    raise UserError(
                        f"{f.path}: {c.arch} width {width} is not {len(names)} x the model's site widths "
                        f"({', '.join(f'{h}: {w[h]}' for h in names)})"
                    )
            continue
        resolve_hookpoints(model, f.sites)
        w = hookpoint_widths(model, f.sites)
        out = c.out_hookpoint or c.hookpoint
        if w[c.hookpoint] != c.d_in or w[out] != c.d_out:
            got = f"{w[c.hookpoint]}" + (f"->{w[out]}" if c.out_hookpoint else "")
            raise UserError(
                f"{f.path}: SAE width {c.d_in}->{c.d_out} does not match the model's {c.hookpoint}"
                + (f"->{out}" if c.out_hookpoint else "")
                + f" ({got})"
            )


def open_shared_data(
    folders: list[SaeFolder],
    device: str = "cpu",
    model: str | None = None,
    corpus: str | None = None,
    context: int | None = None,
    loaded_model: LoadedModel | None = None,
    dtype: str = "float32",
) -> SaeData:
    """One model and one set of token rows for several SAE folders (`shared_provenance` says which),
    checked against what each folder trained on: a corpus override prints a note, and rows of the
    recorded corpus whose fingerprint changed (the file changed on disk, another tokenizer) a warning.
    `loaded_model`: an already loaded model to use instead of loading it again; `dtype`: the model's precision."""
    prov = shared_provenance(folders, model, corpus, context)
    other_model = [f for f in folders if str(f.provenance.model_spec) != prov.model_spec]
    if model and other_model:
        print(
            f"saelab: note: using model {prov.model_spec!r}; {other_model[0].path} was trained on "
            f"{other_model[0].provenance.model_spec!r}",
            file=sys.stderr,
        )
    lm = loaded_model or load_model(prov.model_spec, device=device, dtype=dtype)
    if folders:
        check_fits(folders, lm.model)
    rows = load_token_rows(
        prov.corpus,
        lm.tokenizer,
        prov.context,
        prov.heldout_fraction,
        prov.text_field,
        vocab_size=lm.model.config.vocab_size,
    )
    matches: list[bool | None] = []
    for f in folders:
        rec = f.provenance
        if not _same_source(prov.corpus, rec.corpus):
            matches.append(False)
            print(
                f"saelab: note: {f.name}: using corpus {prov.corpus!r}, a different corpus than the one it was "
                f"trained on ({rec.corpus!r})",
                file=sys.stderr,
            )
        elif rec.data_fingerprint is None:
            matches.append(None)
        elif rec.data_fingerprint == rows.fingerprint:
            matches.append(True)
        else:
            matches.append(False)
            print(
                f"saelab: warning: {f.name}: the token rows of {prov.corpus!r} differ from the ones it was trained "
                f"on (fingerprint {rows.fingerprint}, recorded {rec.data_fingerprint}): the corpus changed on disk "
                f"or the tokenizer differs, so its held-out rows may include rows it trained on",
                file=sys.stderr,
            )
    return SaeData(lm, rows, prov, matches)
