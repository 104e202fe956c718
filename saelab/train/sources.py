"""Where training batches come from, behind one interface: `batches(cursor) -> Iterator[Batch]`.

  ChunkedSource    optimiser batches cut from shuffled chunks of activations, streamed from the
                   LM (`activations.stream.ActivationStream`) or read from an activation cache on
                   disk (`activations.disk_cache.CachedActivationStream`): the local objective.
  TokenRowSource   whole token rows, for objectives that run the model themselves (e2e).

A batch that ends a resumable unit (a chunk, an e2e step) carries `cursor`: the position a resumed
run starts from, so a resumed run sees exactly the data an uninterrupted one would.

The token budget is a contract: a run trains on `--tokens` rounded down to whole LM batches
(`rows_per_batch * context` positions), never more.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..activations.disk_cache import CachedActivationStream, cache_sites, read_manifest, same_model
from ..activations.stream import ActivationStream, row_order
from ..data import check_source, load_token_rows
from ..errors import UserError
from ..model_pair import check_b_widths, check_same_tokenizer, load_pair, with_b_sites
from ..models import EMBEDDED, LoadedModel, depth_order, hookpoint_widths, load_model, resolve_hookpoints
from ..sae.crosscoder import SEP
from ..sae.registry import kind_of
from ..sinks import SinkConfig, special_ids
from ..storage import cache_dir, fingerprint
from .finetune_budget import MIN_FINETUNE_STEPS


class SiteActs(dict):
    """hookpoint -> activations; a crosscoder's joined name ('A+B+C') reads as the sites side by side."""

    def __missing__(self, key: str) -> torch.Tensor:
        if SEP not in key:
            raise KeyError(key)
        return torch.cat([self[h] for h in key.split(SEP)], dim=-1)


def join_crosscoder_sites(cfg, sites: list[tuple[str, str | None]], widths: dict[str, int]):
    """A multi-site type (--arch crosscoder, clt): every resolved site becomes one dictionary reading (and
    writing) all of them; a multi-site transcoder (clt) joins its input sites and its output sites, in order."""
    kind = kind_of(cfg.arch)
    if not kind.capabilities.multi_site:
        return sites, widths
    names, outs = [a for a, _ in sites], [b for _, b in sites]
    if len(names) < 2:
        raise UserError(
            f"--arch {cfg.arch} needs at least two hookpoints (e.g. 'model.layers.{{4,6,8}}'); "
            f"{', '.join(names)} is one"
        )
    for side in (names, outs) if outs[0] else (names,):
        if len({widths[h] for h in side}) > 1:
            raise UserError(
                f"--arch {cfg.arch} needs sites of one width; " + ", ".join(f"{h} has {widths[h]}" for h in side)
            )
    joined = SEP.join(names)
    widths = widths | {joined: widths[names[0]] * len(names)}
    if not outs[0]:
        return [(joined, None)], widths
    joined_out = SEP.join(outs)
    kind.check_training_memory(cfg, len(names), widths[names[0]], widths[outs[0]])
    return [(joined, joined_out)], widths | {joined_out: widths[outs[0]] * len(outs)}


@dataclass
class Batch:
    """One optimiser step's data."""

    acts: dict[str, torch.Tensor] | None = None  # hookpoint -> [n, d] raw non-sink activations, shuffled
    ids: torch.Tensor | None = None  # token rows [rows, context]
    positions: int = 0  # positions that count towards the dead-latent counters
    progress: float = 0.0  # fraction of the run's LM tokens consumed before it
    lm_tokens: int = 0  # LM positions completed with this batch (chunk end, e2e step)
    excluded: int = 0  # sink/outlier positions left out with this batch
    cursor: int | None = None  # set when a run may checkpoint after it: where to resume
    sample: Batch | None = None  # more of the same data (its chunk's first 16,384 vectors):
    # for data-dependent init and finalize, steadier than one batch


def lm_rows_for(tokens: int, batch_tokens: int, context: int) -> tuple[int, int]:
    """(rows per LM batch, LM rows of the run): the token budget rounded down to whole batches."""
    rows_per_batch = max(1, batch_tokens // context)
    return rows_per_batch, (tokens // (rows_per_batch * context)) * rows_per_batch


class ChunkedSource:
    def __init__(self, stream, batch_tokens: int):
        self.stream, self.batch_tokens = stream, batch_tokens
        self.total_lm_tokens = stream.total_lm_tokens
        self.epochs = stream.epochs

    def batches(self, cursor: int = 0) -> Iterator[Batch]:
        for chunk in self.stream.chunks(cursor):
            n = next(iter(chunk.acts.values())).shape[0]
            n_batches = max(1, math.ceil(n / self.batch_tokens))
            before = self.stream.lm_tokens_before(chunk.index)
            sample = Batch(acts=SiteActs({h: a[:16384] for h, a in chunk.acts.items()}))
            for b in range(n_batches):
                last = b == n_batches - 1
                sl = slice(b * self.batch_tokens, (b + 1) * self.batch_tokens)
                acts = SiteActs({h: a[sl] for h, a in chunk.acts.items()})
                yield Batch(
                    acts=acts,
                    positions=next(iter(acts.values())).shape[0],
                    progress=(before + chunk.lm_tokens * b / n_batches) / self.total_lm_tokens,
                    lm_tokens=chunk.lm_tokens if last else 0,
                    excluded=chunk.excluded if last else 0,
                    cursor=chunk.index + 1 if last else None,
                    sample=sample,
                )


class TokenRowSource:
    """Batches of whole training rows in a seeded order (the order an activation stream would visit)."""

    def __init__(self, rows, rows_per_batch: int, n_rows: int, seed: int, device: str = "cpu"):
        train = rows.train_rows
        self.rows, self.rows_per_batch, self.device = rows, rows_per_batch, device
        self.order = train[row_order(len(train), n_rows, seed)]
        self.n_steps = n_rows // rows_per_batch
        self.total_lm_tokens = n_rows * rows.tokens.shape[1]
        self.epochs = n_rows / max(1, len(train))

    def batches(self, cursor: int = 0) -> Iterator[Batch]:
        for step in range(cursor, self.n_steps):
            sel = np.sort(self.order[step * self.rows_per_batch : (step + 1) * self.rows_per_batch])
            ids = torch.from_numpy(np.asarray(self.rows.tokens[sel], dtype=np.int64)).to(self.device)
            yield Batch(
                ids=ids, positions=ids.numel(), progress=step / self.n_steps, lm_tokens=ids.numel(), cursor=step + 1
            )


class PhasedSource:
    """`--finetune-fraction`: local batches (shuffled activations) for the first rows of the run, then
    whole token rows (the kl+mse objective) for the last ones, from one visiting order, so the two
    phases never share a row and the learning-rate schedule runs over the whole budget.

    Cursors: phase 1 keeps its chunk cursors 1..n_chunks; phase-2 step s (0-based, from `start`)
    ends at cursor n_chunks + s - start + 1, so one integer resumes either phase."""

    def __init__(self, local: ChunkedSource, rows: TokenRowSource, local_rows: int):
        self.local, self.rows = local, rows
        self.start = local_rows // rows.rows_per_batch  # first fine-tune step
        self.n_chunks = local.stream.n_chunks
        self.total_lm_tokens = rows.total_lm_tokens
        self.epochs = rows.epochs
        self.share = local.total_lm_tokens / rows.total_lm_tokens  # of the run's progress in phase 1

    def batches(self, cursor: int = 0) -> Iterator[Batch]:
        if cursor < self.n_chunks:
            for b in self.local.batches(cursor):
                b.progress *= self.share
                yield b
        for b in self.rows.batches(self.start + max(0, cursor - self.n_chunks)):
            b.cursor = self.n_chunks + b.cursor - self.start
            yield b


@dataclass
class TrainingInputs:
    """Everything a run trains on, whether it streams from the LM or reads an activation cache."""

    source: ChunkedSource | TokenRowSource
    sites: list[tuple[str, str | None]]  # (input site, transcoder output site or None)
    widths: dict[str, int]
    model_name: str  # for cfg.json metadata.model_name
    sink: SinkConfig
    data: dict  # corpus provenance: source, text_field, heldout_fraction, fingerprint, rows
    lm: LoadedModel | None = None  # None when training from an activation cache
    special: list[int] = field(default_factory=list)


def local_model_config(model_spec: str):
    """The model's transformers config when it is on disk (embedded or a folder), else None: checks
    that need no weights (depth, widths) use it before any model loads."""
    try:
        from transformers import AutoConfig

        src = cache_dir() / "models" / "SmolLM2-135M-Instruct" if model_spec == EMBEDDED else Path(model_spec)
        if not (Path(src) / "config.json").exists():
            return None
        return AutoConfig.from_pretrained(src)
    except Exception:  # noqa: BLE001 - the post-load checks still run
        return None


def precheck_depth(model_spec: str, sites: list[tuple[str, str | None]]) -> None:
    """A hookpoint deeper than the model fails before any weights load (when the config is local)."""
    conf = local_model_config(model_spec)
    n = getattr(conf, "num_hidden_layers", None)
    if n is None:
        return
    for a, b in sites:
        for s in (a, b):
            m = re.search(r"layers\.(\d+)", s or "")
            if m and int(m.group(1)) >= n:
                raise UserError(f"hookpoint {s!r} is deeper than the model: it has {n} layers (0..{n - 1})")


def precheck(cfg, sites) -> None:
    """Checks of the data and sites that need no model weights."""
    if cfg.from_activations:
        read_manifest(Path(cfg.from_activations))
    else:
        check_source(cfg.corpus)
        precheck_depth(cfg.model, sites)
        d = getattr(local_model_config(cfg.model), "hidden_size", None)
        if d:  # an estimate from the model's width (the sites' own widths are checked once the model loads)
            kind_of(cfg.arch).check_training_memory(cfg, len(sites), d, d)
    if cfg.model_b:
        precheck_depth(cfg.model_b, sites)
        check_same_tokenizer(cfg.model, cfg.model_b)


def open_inputs(cfg, patterns: list[tuple[str, str | None]], wrap_stream=lambda s: s) -> TrainingInputs:
    """The model (or activation cache), the concrete sites, the data and the batch source of a run.
    `wrap_stream` lets distributed training split the LM forwards over its ranks."""
    if cfg.from_activations:
        return _open_cache(cfg, patterns)
    lm = (
        load_pair(cfg.model, cfg.model_b, cfg.device, cfg.dtype)
        if cfg.model_b
        else load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    )
    model = lm.model
    sites = []
    for a, b in patterns:
        ra = resolve_hookpoints(model, [a])
        rb = resolve_hookpoints(model, [b]) if b else [None] * len(ra)
        if b and len(ra) != len(rb):
            raise UserError(f"transcoder {a}->{b}: patterns match {len(ra)} and {len(rb)} sites")
        sites += list(zip(ra, rb))
    if cfg.model_b:  # model diffing: the same sites in B (ModelPair names them model_b.<site>)
        sites = with_b_sites(sites)
    hookpoints = depth_order(model, [h for s in sites for h in s if h])
    rows = load_token_rows(
        cfg.corpus, lm.tokenizer, cfg.context, cfg.heldout_fraction, cfg.text_field, vocab_size=model.config.vocab_size
    )
    sink = SinkConfig(cfg.sink_first_positions, cfg.mask_special, cfg.sink_norm_factor)
    special = special_ids(lm.tokenizer)
    rows_per_batch, n_rows = lm_rows_for(cfg.tokens, cfg.batch_tokens, cfg.context)
    if cfg.loss == "local":
        local_rows = finetune_split(cfg, rows_per_batch, n_rows) if cfg.finetune_fraction else n_rows
        stream = ActivationStream(
            model,
            rows,
            hookpoints,
            cfg.context,
            rows_per_batch,
            cfg.buffer_batches,
            local_rows,
            cfg.seed,
            sink,
            special,
            cfg.device,
            lm_rows=max(1, (cfg.lm_batch_tokens or cfg.batch_tokens) // cfg.context),
        )
        source = ChunkedSource(wrap_stream(stream), cfg.batch_tokens)
        if local_rows < n_rows:
            source = PhasedSource(
                source, TokenRowSource(rows, rows_per_batch, n_rows, cfg.seed, cfg.device), local_rows
            )
    else:
        source = TokenRowSource(rows, rows_per_batch, n_rows, cfg.seed, cfg.device)
    if source.epochs > 1:
        print(
            f"saelab: the corpus has {len(rows.train_rows) * cfg.context:,} training tokens; "
            f"--tokens {cfg.tokens:,} repeats it {source.epochs:.1f} times",
            flush=True,
        )
    data = {
        "source": cfg.corpus,
        "text_field": cfg.text_field,
        "heldout_fraction": cfg.heldout_fraction,
        "fingerprint": rows.fingerprint,
        "rows": int(len(rows.tokens)),
        "train_rows": int(len(rows.train_rows)),
        "heldout_rows": int(len(rows.heldout_rows)),
        "epochs": source.epochs,
    }
    widths = hookpoint_widths(model, hookpoints)
    if cfg.model_b:
        check_b_widths(sites, widths, cfg.model, cfg.model_b)
    sites, widths = join_crosscoder_sites(cfg, sites, widths)
    return TrainingInputs(source, sites, widths, lm.name, sink, data, lm, special)


def finetune_split(cfg, rows_per_batch: int, n_rows: int) -> int:
    """Rows of the local phase: the last `finetune_fraction` of the budget, in whole batches (at least one
    each side), is the kl+mse fine-tune."""
    steps = n_rows // rows_per_batch
    ft = max(1, round(cfg.finetune_fraction * steps))
    if ft >= steps:
        raise UserError(
            f"--finetune-fraction {cfg.finetune_fraction} of {steps} batch(es) leaves no local "
            f"training; raise --tokens or lower the fraction"
        )
    if ft < MIN_FINETUNE_STEPS:  # the phase keeps the run's batch: say when it is too short to help
        print(
            f"saelab: note: --finetune-fraction {cfg.finetune_fraction} gives the kl+mse phase {ft} step(s) of "
            f"{rows_per_batch * cfg.context:,} tokens; fewer than {MIN_FINETUNE_STEPS} barely move the dictionary. "
            f"Lower --batch-tokens, or fine-tune afterwards with --init-from ... --loss kl+mse (docs/E2E.md)",
            file=sys.stderr,
        )
    return (steps - ft) * rows_per_batch


def _open_cache(cfg, patterns) -> TrainingInputs:
    """An activation cache made by `saelab cache-activations`, checked against the run's options."""
    folder = Path(cfg.from_activations)
    m = read_manifest(folder)
    if not same_model(cfg.model, m):
        raise UserError(
            f"activation cache {folder} was made with model {m['model']['spec']!r}, not {cfg.model!r}; "
            f"pass --model {m['model']['spec']} or build a cache for this model"
        )
    if cfg.context != m["context"]:
        raise UserError(f"activation cache {folder} has context {m['context']}; pass --context {m['context']}")
    sites = cache_sites(folder, m, patterns)
    hooks = [h for h in m["hookpoints"] if any(h in s for s in sites)]
    rows_per_batch, n_rows = lm_rows_for(cfg.tokens, cfg.batch_tokens, cfg.context)
    stream = CachedActivationStream(
        folder, m, hooks, cfg.context, rows_per_batch, cfg.buffer_batches, n_rows, cfg.seed, cfg.device
    )
    if stream.epochs > 1:
        print(
            f"saelab: the cache holds {sum(x['lm_tokens'] for x in m['shards']):,} LM tokens; --tokens "
            f"{cfg.tokens:,} reads it {stream.epochs:.1f} times",
            flush=True,
        )
    d = m["data"]
    data = {
        "source": d["source"],
        "text_field": d.get("text_field", "text"),
        "heldout_fraction": d.get("heldout_fraction", 0.05),
        "fingerprint": d["fingerprint"],
        "rows": d["rows"],
        "train_rows": d["train_rows"],
        "heldout_rows": d["heldout_rows"],
        "epochs": stream.epochs,
        "activation_cache": str(folder),
        "activation_cache_fingerprint": fingerprint(d["fingerprint"], "cache", m["shards"], m["hookpoints"]),
    }
    sites, widths = join_crosscoder_sites(cfg, sites, {h: m["widths"][h] for h in hooks})
    return TrainingInputs(
        ChunkedSource(stream, cfg.batch_tokens), sites, widths, m["model"]["name"], SinkConfig(**m["sink"]), data
    )
