"""Interventions that check a graph: ablate, scale or clamp features at given positions and watch the logits
and every other feature move.

Two models to intervene on (`mode`):
- "replacement": the local replacement model with its errors frozen, the model the graph describes. Each
  replaced MLP's output is its dictionary's output from the live MLP input (the edits applied) plus the error
  (MLP output - dictionary output) recorded on the clean run, so with no edit the forward is the real model's
  and an edit propagates through the dictionaries only: downstream features are re-encoded from their live
  inputs (and are not edited unless listed). A CLT feature at layer l writes into every MLP output from l on.
- "model": the real model; each edited layer's MLP output gets decoder(edited) - decoder(live) at the edited
  positions (sae/splice.py with error_term: steering's splice), every MLP stays the model's own.

`freeze=True` (mode "replacement" only) also holds attention patterns, normalisation denominators and the
unedited features at the clean run (circuits/frozen.py's frozen forward, the one the graph differentiates):
then a target's input changes by the graph's direct edges from the edited features, each times the edit's
change over the feature's activation (ablation: minus the edge), and `input_change` gives every listed
feature's pre-activation change (the graph's feature rows) while its activation stays frozen.

Edits name (model layer, position, feature id within that layer's dictionary): the graph's
`active_features` coordinates. Bad edits fail with a UserError before any forward runs.
"""

from __future__ import annotations

import math
import operator
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..models import LoadedModel, first_tensor, module_at
from ..sae.latents import from_dense
from ..sae.splice import clt_output, clt_spliced, decode_dense, spliced
from .coders import ReplacementCoders
from .frozen import frozen_forward, record

OPS = ("ablate", "scale", "clamp")
MODES = ("replacement", "model")


@dataclass(frozen=True)
class Edit:
    """One feature edit: ablate (set to 0), scale (multiply by value) or clamp (set to value)."""

    layer: int  # the model's layer
    position: int
    feature: int  # id within that layer's dictionary (a CLT: within the layer's n latents)
    op: str = "ablate"
    value: float = 0.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "ablate":
            return torch.zeros_like(x)
        if self.op == "scale":
            return x * self.value
        return torch.full_like(x, self.value)


@dataclass
class InterventionResult:
    """What an intervention changed: the last position's logits and every feature active before or after."""

    mode: str
    edits: list[Edit]
    logits_before: torch.Tensor  # [vocab] the last position's logits, clean
    logits_after: torch.Tensor  # [vocab] ... with the edits
    targets: torch.Tensor  # [n_targets] long: vocab ids whose change is reported
    features: torch.Tensor  # [n, 3] long (layer, position, id): every feature active before or after
    before: torch.Tensor  # [n] float32 its activation, clean
    after: torch.Tensor  # [n] ... with the edits (an edited feature: its edited value)
    input_change: torch.Tensor | None = None  # [n] freeze=True: each feature's pre-activation change

    @property
    def target_change(self) -> torch.Tensor:
        """[n_targets] change of each target's logit."""
        return self.logits_after[self.targets] - self.logits_before[self.targets]

    @property
    def target_input_change(self) -> torch.Tensor:
        """[n_targets] change of each target's demeaned logit (logit - mean over the vocab): a graph's logit
        node input, so what the graph's edges predict."""
        after = self.logits_after[self.targets] - self.logits_after.mean()
        return after - (self.logits_before[self.targets] - self.logits_before.mean())

    def top_changed(self, n: int = 10, include_edited: bool = False) -> list[dict]:
        """The n features whose activation moved most (absolute change), the edited ones left out unless asked."""
        change = self.after - self.before
        keep = torch.ones_like(change, dtype=torch.bool)
        if not include_edited:
            for e in self.edits:
                keep &= ~(self.features == torch.tensor([e.layer, e.position, e.feature])).all(1)
        idx = torch.nonzero(keep & (change != 0)).squeeze(1)
        idx = idx[change[idx].abs().argsort(descending=True)[:n]]
        return [
            {"layer": int(l), "position": int(p), "feature": int(f), "before": float(b), "after": float(a)}
            for (l, p, f), b, a in zip(self.features[idx].tolist(), self.before[idx], self.after[idx])
        ]

    def to_json(self, tokenizer=None, n_features: int = 20, n_logits: int = 5) -> dict:
        """The targets' logits, the top `n_logits` next tokens before and after, and the `n_features` features
        that moved most (what a page or a log shows)."""
        label = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str

        def top(logits: torch.Tensor) -> list[dict]:
            p = torch.softmax(logits.double(), -1)
            ids = logits.topk(min(n_logits, len(logits))).indices.tolist()
            return [{"token": t, "label": label(t), "logit": float(logits[t]), "prob": float(p[t])} for t in ids]

        return {
            "mode": self.mode,
            "edits": [e.__dict__ for e in self.edits],
            "targets": [
                {"token": int(t), "label": label(int(t)), "before": float(b), "after": float(b + d)}
                for t, b, d in zip(self.targets.tolist(), self.logits_before[self.targets], self.target_change)
            ],
            "top_before": top(self.logits_before),
            "top_after": top(self.logits_after),
            "top_changed_features": self.top_changed(n_features),
        }


def as_edit(e) -> Edit:
    """An Edit from an Edit, a (layer, position, feature[, op[, value]]) tuple or a dict of those fields."""
    if isinstance(e, Edit):
        return _normalised(e)
    if isinstance(e, dict):
        try:
            return _normalised(Edit(**e))
        except TypeError as err:
            raise UserError(f"edit {e!r}: {err}") from None
    if not isinstance(e, (tuple, list)) or not 3 <= len(e) <= 5:
        raise UserError(f"an edit is (layer, position, feature id, op, value); got {e!r}")
    if len(e) == 4 and e[3] in ("scale", "clamp"):
        raise UserError(f"edit {tuple(e)!r}: {e[3]} needs a value: (layer, position, feature, {e[3]!r}, value)")
    return _normalised(Edit(*e))


def _normalised(e: Edit) -> Edit:
    """Integer-like coordinates (numpy / one-element tensors) as ints and the value as a float, when they are."""
    try:
        fields = [operator.index(v) for v in (e.layer, e.position, e.feature)]
        return Edit(*fields, e.op, float(e.value))
    except (TypeError, ValueError):
        return e  # check_edits names what is wrong


def check_edits(replacement, edits, n_pos: int) -> list[Edit]:
    """The edits, each checked against the replacement and the prompt (UserError naming the bad one)."""
    out = [as_edit(e) for e in edits]
    for e in out:
        if e.op not in OPS:
            raise UserError(f"edit {_name(e)}: unknown op {e.op!r}; one of {', '.join(OPS)}")
        for what, v in (("layer", e.layer), ("position", e.position), ("feature", e.feature)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"edit {_name(e)}: {what} must be an integer, not {v!r}")
        if not isinstance(e.value, (int, float)) or not math.isfinite(e.value):
            raise UserError(f"edit {_name(e)}: value must be a finite number, not {e.value!r}")
        if e.layer not in replacement.layers:
            raise UserError(
                f"edit {_name(e)}: layer {e.layer} has no dictionary in {replacement.path} "
                f"(its layers: {_span(replacement.layers)})"
            )
        if not 0 <= e.position < n_pos:
            raise UserError(f"edit {_name(e)}: position {e.position} is out of range; the prompt has {n_pos} tokens")
        n = _n_features(replacement, replacement.layers.index(e.layer))
        if not 0 <= e.feature < n:
            raise UserError(
                f"edit {_name(e)}: feature {e.feature} is out of range; layer {e.layer} has {n} (0-{n - 1})"
            )
    return out


def intervene(
    model, replacement, tokens, edits, mode: str = "replacement", targets=None, freeze: bool = False
) -> InterventionResult:
    """Run the prompt `tokens` ([n_pos] or [1, n_pos] ids) clean and with `edits`; `targets` (vocab ids; default
    the clean top token) are the logits whose change is reported. `model`: a LoadedModel or its nn.Module."""
    net = model.model if isinstance(model, LoadedModel) else model
    ids = _ids(tokens)
    if mode not in MODES:
        raise UserError(f"intervention mode {mode!r}: one of {', '.join(MODES)}")
    if freeze and mode != "replacement":
        raise UserError("freeze=True holds the replacement model's attention and norms; it needs mode 'replacement'")
    edits = check_edits(replacement, edits, ids.shape[1])
    vocab = net.get_output_embeddings().weight.shape[0]
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        bad = targets[(targets < 0) | (targets >= vocab)]
        if bad.numel():
            raise UserError(f"target token {int(bad[0])} is not in the {vocab}-token vocabulary")
    with torch.no_grad():
        if freeze:
            logits0, logits1, feats, b, a, dx = _frozen_run(net, replacement, ids, edits)
            targets = logits0.argmax().reshape(1) if targets is None else targets
            return InterventionResult(mode, edits, logits0, logits1, targets, feats, b, a, dx)
        logits0, ins, outs = _clean_run(net, replacement, ids)
        before = _encode_all(replacement, ins)
        frozen = _frozen(replacement, before, ins, outs) if mode == "replacement" else None
        seen: dict[int, torch.Tensor] = {}
        editor = _editor(replacement, edits, seen)
        with ExitStack() as stack:
            _splice(stack, net, replacement, editor, frozen)
            logits1 = net(input_ids=ids, use_cache=False).logits
    if targets is None:
        targets = logits0[0, -1].argmax().reshape(1)
    feats, b, a = _feature_table(replacement, before, seen)
    return InterventionResult(mode, edits, logits0[0, -1].float(), logits1[0, -1].float(), targets, feats, b, a)


# ------------------------------------------------------------ the runs


def _clean_run(net, replacement, ids):
    """The clean forward: its logits, and each replaced layer's MLP input and output [1, n_pos, d]."""
    store: dict[str, torch.Tensor] = {}
    hooks = [_record(net, s, store) for s in replacement.input_sites + replacement.output_sites]
    try:
        logits = net(input_ids=ids, use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, [store[s] for s in replacement.input_sites], [store[s] for s in replacement.output_sites]


def _record(net, site: str, store: dict):
    mod = module_at(net, site)
    if site.endswith(":input"):
        return mod.register_forward_pre_hook(lambda m, args: store.__setitem__(site, args[0]))
    return mod.register_forward_hook(lambda m, a, out: store.__setitem__(site, first_tensor(out)))


def _encode_all(replacement, ins) -> list[torch.Tensor]:
    """Each replaced layer's dense latents [n_pos, n] of the MLP inputs `ins`, as the splice encodes them."""
    out = []
    for i, x in enumerate(ins):
        flat = x.reshape(-1, x.shape[-1])
        if replacement.kind == "plt":
            sae = replacement.dictionaries[i]
            out.append(sae.encode_raw(flat.to(sae.W_enc.dtype)).to_dense())
        else:
            clt = replacement.dictionaries[0]
            out.append(clt.encode_layer(i, flat.to(clt.b_enc.dtype)).to_dense())
    return out


def _frozen(replacement, dense, ins, outs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each replaced layer's (MLP output, dictionary output) on the clean run, [n_pos, d_out], decoded as the
    splice decodes: the splice adds their difference (the error) to the live dictionary output, bitwise the
    clean output while nothing changed."""
    if replacement.kind == "plt":
        recon = [
            decode_dense(sae, d, ins[i].reshape(d.shape[0], -1).to(d.dtype))
            for i, (sae, d) in enumerate(zip(replacement.dictionaries, dense))
        ]
    else:
        lats = [from_dense(d) for d in dense]
        recon = [clt_output(replacement.dictionaries[0], lats, t) for t in range(len(dense))]
    return [(o.reshape(r.shape), r) for o, r in zip(outs, recon)]


def _editor(replacement, edits: list[Edit], seen: dict):
    """edit(i, dense [1, n_pos, n]) for replaced layer index i: applies that layer's edits and keeps the
    resulting latents in seen[i] ([n_pos, n])."""
    by_layer: dict[int, list[Edit]] = {}
    for e in edits:
        by_layer.setdefault(replacement.layers.index(e.layer), []).append(e)

    def edit(i: int, dense: torch.Tensor) -> torch.Tensor:
        for e in by_layer.get(i, ()):
            dense[0, e.position, e.feature] = e.apply(dense[0, e.position, e.feature])
        seen[i] = dense[0].clone()
        return dense

    return edit


def _splice(stack: ExitStack, net, replacement, editor, frozen) -> None:
    """Every replaced layer spliced with `editor`: errors frozen (mode replacement) or the model's own MLP plus
    the edit's decoder change (frozen None: mode model)."""
    if replacement.kind == "plt":
        for i, sae in enumerate(replacement.dictionaries):
            stack.enter_context(
                spliced(
                    net,
                    sae,
                    error_term=frozen is None,
                    edit=lambda d, i=i: editor(i, d),
                    frozen=None if frozen is None else frozen[i],
                )
            )
    else:
        clt = replacement.dictionaries[0]
        ins, outs = replacement.input_sites, replacement.output_sites
        stack.enter_context(clt_spliced(net, clt, ins, outs, error_term=frozen is None, edit=editor, frozen=frozen))


def _feature_table(replacement, before: list[torch.Tensor], after: dict[int, torch.Tensor]):
    """(features [n, 3] (layer, position, id), before [n], after [n]) of every feature active in either run."""
    rows, b, a = [], [], []
    for i, d0 in enumerate(before):
        d1 = after.get(i, d0)
        pos, fid = torch.nonzero((d0 != 0) | (d1 != 0), as_tuple=True)
        rows.append(torch.stack([torch.full_like(pos, replacement.layers[i]), pos, fid], 1))
        b.append(d0[pos, fid].float())
        a.append(d1[pos, fid].float())
    return torch.cat(rows), torch.cat(b), torch.cat(a)


# ------------------------------------------------------------ freeze=True


def _frozen_run(net, replacement, ids, edits):
    """Two frozen forwards (circuits/frozen.py) from the clean recording: MLP outputs = the clean leaves
    (dictionary writes + errors), then with each edit's change x its decoders added to the layers it writes.
    -> (last logits clean, edited, features [n, 3], before [n], after [n], pre-activation change [n])."""
    rec = record(net, ids[0])
    coders = ReplacementCoders(replacement)
    n, n_layers = rec.n_pos, len(rec.mlp_in)
    leaves = {l: (rec.mlp_out[l] - coders.skip(l, rec.mlp_in[l]))[None] for l in range(n_layers)}
    feats = {l: coders.encode(l, rec.mlp_in[l]) for l in coders.layers}
    edited = {l: leaves[l].clone() for l in range(n_layers)}
    after: dict[tuple[int, int, int], float] = {}
    for e in edits:
        key = (e.layer, e.position, e.feature)
        f = feats[e.layer]
        hit = torch.nonzero((f.positions == e.position) & (f.ids == e.feature)).squeeze(1)
        a = float(f.values[hit[0]]) if len(hit) else 0.0
        new = float(e.apply(torch.tensor(after.get(key, a))))
        for tgt in coders.write_layers(e.layer):
            w = coders.write_vectors(e.layer, torch.tensor([e.feature]), tgt)[0]
            edited[tgt][0, e.position] += (new - after.get(key, a)) * w
        after[key] = new
    runs = [frozen_forward(net, rec, coders, n, rec.resid0[None], lv) for lv in (leaves, edited)]
    head = net.get_output_embeddings()
    logits = [head(r.final[0, -1]).float() for r in runs]
    table = torch.cat([torch.stack([torch.full_like(f.ids, l), f.positions, f.ids], 1) for l, f in feats.items()])
    before = torch.cat([f.values for f in feats.values()])
    extra = [k for k in after if not (table == torch.tensor(k)).all(1).any()]  # clamped up from 0
    if extra:
        table, before = torch.cat([table, torch.tensor(extra)]), torch.cat([before, torch.zeros(len(extra))])
    values, dx = before.clone(), torch.zeros(len(table))
    for k, v in after.items():
        values[(table == torch.tensor(k)).all(1)] = v
    for l in coders.layers:
        m = table[:, 0] == l
        pos, fid = table[m, 1], table[m, 2]
        moved = runs[1].mlp_in[l][0, pos] - runs[0].mlp_in[l][0, pos]
        dx[m] = (moved * coders.encoder_vectors(l, fid)).sum(-1)
    return logits[0], logits[1], table, before, values, dx


# ------------------------------------------------------------ checks


def _ids(tokens) -> torch.Tensor:
    ids = torch.as_tensor(tokens, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise UserError(f"an intervention runs one prompt: tokens [n_pos] or [1, n_pos], not {list(ids.shape)}")
    if ids.shape[1] == 0:
        raise UserError("an intervention needs a prompt of at least one token")
    return ids


def _n_features(replacement, i: int) -> int:
    d = replacement.dictionaries
    return d[i].cfg.d_sae if replacement.kind == "plt" else d[0].n_per_layer


def _name(e: Edit) -> str:
    return f"(layer {e.layer}, position {e.position}, feature {e.feature}, {e.op})"


def _span(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) if len(layers) <= 8 else f"{layers[0]}-{layers[-1]}"
