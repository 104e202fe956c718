"""`saelab.Model`: a language model with its hookpoints, dictionaries spliced in or steered, and runs
that return logits, activations and feature activations.

Every piece is the stage's own: `models.load_model` loads it (embedded | folder | .gguf | hub id),
`families.py` names its hookpoints, `sae/splice.py` splices a dictionary into the forward
(`spliced`, `clt_spliced`), `features/steer.py` steers (`FeatureSteer` through `steering_context`, the
same edit `saelab steer` and the web app make) and generates (`generate`, KV-cached, a private seed).

The contexts register hooks on the torch model for the length of the `with` block, so every forward
inside it (`run`, `generate`, or `model.torch_model(...)` directly) sees them; they nest.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..features.clt_features import clt_sites, is_clt
from ..features.steer import (
    FeatureEdit,
    FeatureSteer,
    SinkKeep,
    _PositionCounter,
    check_edits,
    encode_prompt,
    prompt_ids,
    steering_context,
)
from ..features.steer import generate as generate_ids
from ..features.steering import MAX_NEW_TOKENS, sink_positions
from ..models import (
    LoadedModel,
    candidate_hookpoints,
    first_tensor,
    hookpoint_widths,
    load_model,
    module_at,
    resolve_hookpoints,
)
from ..sae.crosscoder import SEP
from ..sae.folder import check_fits, unique_names
from ..sae.splice import clt_spliced, spliced
from .dictionary import Dictionary


@dataclass
class RunOutput:
    """What `Model.run` returns (tensors on the model's device).

    logits: `[batch, seq, vocab]` next-token logits (None with `logits=False`).
    tokens: `[batch, seq]` token ids, BOS first, right-padded with the pad id.
    attention_mask: `[batch, seq]` bool, True at real tokens (False at padding: ignore those positions).
    activations: hookpoint -> `[batch, seq, d]`, the activation the rest of the model saw at that site
        (after any dictionary spliced or steered there).
    features: dictionary name -> `[batch, seq, d_sae]` dense latent activations (float32): the latents
        a steered dictionary used (clamp / add applied), else its encoding of what arrived at its input site.
    """

    logits: torch.Tensor | None
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)


Features = Dictionary | Sequence[Dictionary] | Mapping[str, Dictionary]


class Model:
    """A causal language model (Hugging Face transformers) for interpretability work.

    `Model.load("embedded")` (SmolLM2-135M, shipped with saelab), a local model folder, a `.gguf` file,
    a hub id, or a `Dictionary` (its training model). Runs without gradients, in eval mode."""

    def __init__(self, loaded: LoadedModel, spec: str):
        self._lm = loaded
        self.spec: str = spec
        """What it was loaded from (as given to `Model.load`)."""
        self._counters: list[_PositionCounter] = []  # open steers and splices: positions restart per sequence
        self._edited: dict[int, torch.Tensor] = {}  # id(dictionary) -> the edited latents of the last forward
        self._fits: weakref.WeakSet = weakref.WeakSet()  # dictionaries already checked against the model

    @classmethod
    def load(cls, spec: str | Path | Dictionary = "embedded", device: str = "cpu", dtype: str = "float32") -> Model:
        """Load `spec`: "embedded", a model folder, a `.gguf` file, a hub id, or a Dictionary (the model
        it was trained on). `dtype`: float32 | bfloat16 | float16 (refused where `device` cannot run it)."""
        if isinstance(spec, Dictionary):
            spec = spec.provenance.model_spec
        return cls(load_model(str(spec), device=device, dtype=dtype), str(spec))

    # ------------------------------------------------------------ what it is
    @property
    def torch_model(self) -> torch.nn.Module:
        """The underlying `transformers` causal LM (private API of its own; hooks of open contexts are on it)."""
        return self._lm.model

    @property
    def tokenizer(self):
        """Its Hugging Face tokenizer."""
        return self._lm.tokenizer

    @property
    def name(self) -> str:
        """Its name (what cfg.json's metadata.model_name records)."""
        return self._lm.name

    @property
    def device(self) -> torch.device:
        """Where its weights are."""
        return next(self.torch_model.parameters()).device

    @property
    def hookpoints(self) -> list[str]:
        """The usual hook sites, block by block in forward order (`saelab hookpoints` lists them with kinds).
        A name means the module's output; `name:input` its first input (any module name works)."""
        return [n for n, _ in candidate_hookpoints(self.torch_model)]

    def width(self, hookpoint: str) -> int:
        """The activation width at `hookpoint` (measured with a 2-token forward)."""
        (site,) = resolve_hookpoints(self.torch_model, [hookpoint])
        return hookpoint_widths(self.torch_model, [site])[site]

    def __repr__(self) -> str:
        return f"Model({self.spec!r}, {self.name}, {self.device})"

    # ------------------------------------------------------------ tokens
    def tokenize(self, texts: str | Sequence[str] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids `[batch, seq]` long, mask `[batch, seq]` bool), BOS first as in training rows,
        right-padded. Token ids (`[seq]` or `[batch, seq]`) pass through with an all-True mask."""
        if isinstance(texts, torch.Tensor):
            ids = texts[None] if texts.dim() == 1 else texts
            if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32, torch.int64):
                raise UserError(f"token ids must be an integer tensor [batch, seq], got {tuple(texts.shape)}")
            return ids.long().to(self.device), torch.ones(ids.shape, dtype=torch.bool, device=self.device)
        rows = [prompt_ids(self.tokenizer, t) for t in ([texts] if isinstance(texts, str) else list(texts))]
        if not rows or not all(rows):
            raise UserError("run needs at least one non-empty text")
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        n = max(map(len, rows))
        limit = getattr(self.torch_model.config, "max_position_embeddings", None)
        if limit and n > limit:
            raise UserError(f"a text is {n} tokens; {self.name} reads at most {limit}")
        ids = torch.tensor([r + [pad or 0] * (n - len(r)) for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor([[True] * len(r) + [False] * (n - len(r)) for r in rows], device=self.device)
        return ids, mask

    # ------------------------------------------------------------ contexts
    def _check(self, d: Dictionary) -> None:
        if not isinstance(d, Dictionary):
            raise UserError(f"expected a saelab.Dictionary (from saelab.load), got {type(d).__name__}")
        if d.device != self.device:
            raise UserError(f"{d.name} is on {d.device} but the model on {self.device}: use d.to({str(self.device)!r})")
        if d not in self._fits:
            check_fits([d._folder], self.torch_model)  # its sites exist here, with its widths
            self._fits.add(d)

    @contextmanager
    def splice(
        self, dictionaries: Dictionary | Sequence[Dictionary], keep_error: bool = False, skip_first: int | None = None
    ) -> Iterator[Model]:
        """Inside the block, each dictionary's output replaces the activation at its site in every forward
        (an SAE: its reconstruction; a transcoder: its prediction of `out_hookpoint`; a cross-layer
        transcoder: every layer's MLP output, causally). `keep_error=True` adds the reconstruction error
        back, so outputs equal the model's own until a feature is edited. The first `skip_first` positions
        of each sequence keep the model's own activation (default: the sink positions the dictionary was
        trained without, usually 1, as `saelab eval` measures; 0 replaces every position; a cross-layer
        transcoder replaces every position). Crosscoders cannot be spliced into one forward (a clear error)."""
        dicts = [dictionaries] if isinstance(dictionaries, Dictionary) else list(dictionaries)
        if skip_first is not None and skip_first < 0:
            raise UserError(f"skip_first must be >= 0, got {skip_first}")
        for d in dicts:
            self._check(d)
        keeps = []
        with ExitStack() as stack:
            for d in dicts:
                sae = d.module
                if is_clt(sae):
                    ins, outs = clt_sites(sae)
                    stack.enter_context(clt_spliced(self.torch_model, sae, ins, outs, error_term=keep_error))
                    continue
                skip = sink_positions(d.cfg_json) if skip_first is None else skip_first
                keep = SinkKeep(skip) if skip else None
                if keep is not None:
                    keeps.append(keep)
                    self._counters.append(keep)
                stack.enter_context(spliced(self.torch_model, sae, keep=keep, error_term=keep_error))
            try:
                yield self
            finally:
                for keep in keeps:
                    self._counters.remove(keep)

    @contextmanager
    def steer(
        self,
        dictionary: Dictionary,
        clamp: Mapping[int, float] | None = None,
        add: Mapping[int, float] | None = None,
        skip_first: int | None = None,
    ) -> Iterator[Model]:
        """Inside the block, edit the dictionary's latents in every forward: `clamp={latent: value}` sets a
        latent to `value` (activation units of the latent), `add={latent: value}` adds `value` to it
        (= value x its decoder direction added to the activation). The reconstruction error is kept, so
        only the edit changes the model (as `saelab steer` does). The first `skip_first` positions are
        left alone (default: the sink positions the dictionary was trained without, usually 1)."""
        edits = [FeatureEdit(int(j), "clamp", float(v)) for j, v in (clamp or {}).items()]
        edits += [FeatureEdit(int(j), "add", float(v)) for j, v in (add or {}).items()]
        if not edits:
            raise UserError("nothing to steer: give clamp={latent: value} and/or add={latent: value}")
        self._check(dictionary)
        check_edits(edits, dictionary.d_sae)
        if skip_first is not None and skip_first < 0:
            raise UserError(f"skip_first must be >= 0, got {skip_first}")
        skip = sink_positions(dictionary.cfg_json) if skip_first is None else skip_first
        steer = FeatureSteer(edits, None, skip)
        key = id(dictionary)

        def noted(dense: torch.Tensor) -> torch.Tensor:  # the steer's edit, the edited latents kept for `run`
            out = steer(dense)
            self._edited[key] = out.detach().clone()
            return out

        edit = steer if is_clt(dictionary.module) else noted
        self._counters.append(steer)
        try:
            with steering_context(self.torch_model, dictionary.module, edit)():
                yield self
        finally:
            self._counters.remove(steer)
            self._edited.pop(key, None)

    def _reset(self) -> None:
        """A new sequence starts: the open steers and splices count positions from 0 again."""
        for s in self._counters:
            s.reset()

    # ------------------------------------------------------------ running
    @torch.no_grad()
    def run(
        self,
        texts: str | Sequence[str] | torch.Tensor,
        activations: Sequence[str] = (),
        features: Features = (),
        logits: bool = True,
    ) -> RunOutput:
        """One forward over `texts` (a string, a list, or token ids `[batch, seq]`) with whatever is spliced
        or steered, returning the logits, the activations at `activations` (hookpoint names or glob patterns:
        `model.layers.*`) and the latents of each dictionary in `features` (a list, or {name: Dictionary})."""
        model = self.torch_model
        sites = resolve_hookpoints(model, list(activations))
        named = _named(features)
        for d in named.values():
            self._check(d)
        reads = list(dict.fromkeys(s for d in named.values() for s in d.hookpoint.split(SEP)))
        ids, mask = self.tokenize(texts)
        seen: dict[str, torch.Tensor] = {}  # after the edits at the site (what flows on)
        arrived: dict[str, torch.Tensor] = {}  # before them (what a dictionary at the site reads)
        self._reset()
        self._edited.clear()
        with ExitStack() as stack:
            for s in sites:
                stack.callback(_record(model, s, seen, prepend=False).remove)
            for s in reads:
                stack.callback(_record(model, s, arrived, prepend=True).remove)
            out = model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
        feats = {}
        for name, d in named.items():
            if id(d) in self._edited:
                feats[name] = self._edited[id(d)].reshape(*ids.shape, d.d_sae).float()
            else:
                feats[name] = d.encode(torch.cat([arrived[s] for s in d.hookpoint.split(SEP)], dim=-1)).float()
        return RunOutput(out.logits if logits else None, ids, mask, {s: seen[s] for s in sites}, feats)

    def generate(
        self, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0, top_k: int = 0, seed: int = 0
    ) -> str:
        """The continuation of `prompt` (text only, prompt left out): greedy with `temperature=0`, else
        sampled (`top_k` > 0: from the k most likely tokens) with a private generator seeded by `seed`.
        Inside `steer` / `splice` it generates steered / spliced, exactly as `saelab steer` does."""
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
        if temperature < 0 or top_k < 0:
            raise UserError(f"temperature and top_k must be >= 0, got {temperature} and {top_k}")
        ids = encode_prompt(self.tokenizer, prompt)
        new = generate_ids(
            self.torch_model, self.tokenizer, ids, max_new_tokens, temperature, top_k, seed, reset=self._reset
        )
        return self.tokenizer.decode(new, skip_special_tokens=True)


def _named(features: Features) -> dict[str, Dictionary]:
    """{name: Dictionary} of what `run(features=...)` was given (a list: names made distinct)."""
    if isinstance(features, Dictionary):
        features = [features]
    if isinstance(features, Mapping):
        return dict(features)
    ds = list(features)
    return dict(zip(unique_names([d.name for d in ds]), ds))


def _record(model: torch.nn.Module, site: str, store: dict, prepend: bool):
    """A hook keeping the activation at `site` in `store[site]` (`prepend`: before the site's other hooks)."""
    mod = module_at(model, site)
    if site.endswith(":input"):
        return mod.register_forward_pre_hook(lambda m, args: store.__setitem__(site, args[0]), prepend=prepend)
    return mod.register_forward_hook(lambda m, a, out: store.__setitem__(site, first_tensor(out)), prepend=prepend)
