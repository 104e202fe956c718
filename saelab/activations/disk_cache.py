"""Activation cache on disk (`saelab cache-activations`): run the LM once, train many SAEs (a
hyperparameter sweep) without it. Not to be confused with the latent cache (features/latent_cache.py).

`write_cache` runs the same `ActivationStream` as training (same row order, same sink/outlier
exclusion), and writes each chunk as one shard per hookpoint: `shard_00000.<hook>.npy`, float32
[valid tokens, d], readable as a memory map. `manifest.json` (written last, after every shard)
records model, hookpoints and widths, context, corpus and its fingerprint, sink settings, and the
shards with their row counts; a cache without `complete: true` is refused.

`CachedActivationStream` has ActivationStream's interface (total_lm_tokens, epochs,
lm_tokens_before(c), chunks(start) -> Chunk), so training reads it through the same source. Chunk c reads `blocks` of
BLOCK consecutive vectors chosen by a permutation seeded by (seed, epoch) over the whole cache,
then shuffles them together: random reads, memory bounded by one chunk.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..checksums import check_sha256, file_sha256
from ..data import load_token_rows
from ..errors import UserError
from ..models import depth_order, glob_regex, hookpoint_widths, load_model, resolve_hookpoints
from ..option_checks import check_device, check_dtype, check_types, need_at_least, need_choice, need_fraction
from ..options import (
    corpus_option,
    device_option,
    dtype_option,
    model_option,
    opt,
    out_option,
    overwrite_option,
    threads_option,
)
from ..out_folder import ACTIVATION_CACHE, check_space, open_out
from ..sinks import SinkConfig, special_ids
from ..storage import read_json, read_npy, write_json, write_npy
from .stream import ActivationStream, Chunk, lm_rows_for, to_device

MANIFEST = "manifest.json"
CACHE_FORMAT = 1
BLOCK = 256  # vectors read contiguously from one shard
_write_npy = write_npy  # atomic, a full disk is one line (evaluate/synthetic_data.py writes its shards with it)


@dataclass
class CacheConfig:
    """`saelab cache-activations` / `saelab.cache_activations`: run the model once over `tokens` tokens and
    store the activations at `hookpoints` on disk (shards + manifest.json), for `train --from-activations`."""

    out: str = out_option("cache folder (shards + manifest.json)")
    hookpoints: list[str] = opt(help="module names or globs (as in `train`)")
    model: str = model_option()
    corpus: str = corpus_option()
    text_field: str = opt("text", "field holding the text in JSON lines / parquet / hf corpora")
    tokens: int = opt(1_000_000, "LM positions to run (before sink masking)")
    context: int = opt(256, "tokens per row fed to the LM")
    batch_tokens: int = opt(4096, "LM tokens per forward batch")
    shard_batches: int = opt(8, "LM batches per shard")
    sink_first_positions: int = opt(1, "positions at the start of each row left out")
    sink_norm_factor: float = opt(5.0, "leave out positions with norm > factor x median norm (0: off)")
    mask_special: bool = opt(True, "leave out BOS/EOS/pad positions")
    heldout_fraction: float = opt(0.05, "fraction of corpus rows held out (not cached)")
    seed: int = opt(0, "random seed (row order)")
    threads: int | None = threads_option()
    device: str = device_option()
    dtype: str = dtype_option()
    store_dtype: str = opt(
        "float32", "precision of the stored vectors: float32 | float16 | bfloat16 (half the disk; read back as float32)"
    )
    overwrite: bool = overwrite_option("an existing cache folder")

    def validate(self) -> None:
        """Types and ranges, before the model loads."""
        check_types(self)
        need_at_least(self, 1, "tokens", "batch_tokens", "shard_batches", "threads")
        need_at_least(self, 2, "context")
        need_at_least(self, 0, "sink_first_positions", "seed", "sink_norm_factor")
        need_fraction(self, "heldout_fraction")
        if not self.hookpoints or not 0 < self.heldout_fraction < 1:
            raise UserError("give at least one --hookpoints entry; --heldout-fraction must be between 0 and 1")
        if self.tokens < self.context or self.batch_tokens < self.context:
            raise UserError("--tokens and --batch-tokens must hold at least one --context row")
        if self.sink_first_positions >= self.context:
            raise UserError(
                f"--sink-first-positions ({self.sink_first_positions}) leaves nothing of a --context {self.context} row"
            )
        check_device(self.device)
        need_choice(self, "store_dtype", STORE_DTYPES)
        check_dtype(self.dtype, self.device)


STORE_DTYPES = ("float32", "float16", "bfloat16")


def to_stored(a: torch.Tensor, dtype: str) -> np.ndarray:
    """float32 vectors -> what a shard holds: float32 / float16 as such, bfloat16 as its raw 16 bits
    (numpy has no bfloat16; the manifest's `dtype` says how to read them)."""
    if dtype == "bfloat16":
        return a.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy()
    return a.detach().cpu().numpy().astype(dtype, copy=False)


def from_stored(a: np.ndarray, dtype: str) -> torch.Tensor:
    """A shard's array -> float32 vectors (the dictionary's maths runs in float32)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return (t.view(torch.bfloat16) if dtype == "bfloat16" else t).float()


def _safe(h: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", h)


def shard_path(folder: Path, i: int, hook: str) -> Path:
    return Path(folder) / f"shard_{i:05d}.{_safe(hook)}.npy"


def write_cache(cfg: CacheConfig) -> Path:
    """LM forward over `cfg.tokens` training positions -> sharded activations + manifest."""
    cfg.validate()
    folder = open_out(cfg.out, ACTIVATION_CACHE, cfg.overwrite)  # before the model loads
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    hooks = resolve_hookpoints(lm.model, [p for pat in cfg.hookpoints for p in pat.split("->") if p.strip()])
    hooks = depth_order(lm.model, hooks)
    widths = hookpoint_widths(lm.model, hooks)
    rows = load_token_rows(
        cfg.corpus,
        lm.tokenizer,
        cfg.context,
        cfg.heldout_fraction,
        cfg.text_field,
        vocab_size=lm.model.config.vocab_size,
    )
    sink = SinkConfig(cfg.sink_first_positions, cfg.mask_special, cfg.sink_norm_factor)
    rows_per_batch, n_rows = lm_rows_for(cfg.tokens, cfg.batch_tokens, cfg.context)
    stream = ActivationStream(
        lm.model,
        rows,
        hooks,
        cfg.context,
        rows_per_batch,
        cfg.shard_batches,
        n_rows,
        cfg.seed,
        sink,
        special_ids(lm.tokenizer),
        cfg.device,
    )
    per_token = sum(widths[h] for h in hooks) * (4 if cfg.store_dtype == "float32" else 2)
    check_space(cfg.out, stream.total_lm_tokens * per_token)  # the shards, before the folder is touched
    out = folder.prepare()  # --overwrite: an earlier cache's shards and manifest go (moved aside), nothing else
    manifest = {
        "kind": "saelab activation cache",
        "format_version": CACHE_FORMAT,
        "saelab_version": __version__,
        "model": {"spec": cfg.model, "name": lm.name},
        "hookpoints": hooks,
        "widths": widths,
        "context": cfg.context,
        "dtype": cfg.store_dtype,
        "sink": vars(sink),
        "seed": cfg.seed,
        "data": {
            "source": cfg.corpus,
            "text_field": cfg.text_field,
            "heldout_fraction": cfg.heldout_fraction,
            "fingerprint": rows.fingerprint,
            "rows": int(len(rows.tokens)),
            "train_rows": int(len(rows.train_rows)),
            "heldout_rows": int(len(rows.heldout_rows)),
            "split": "train",
            "epochs": stream.epochs,
        },
        "config": asdict(cfg),
        "shards": [],
        "complete": False,
    }
    t0 = time.time()
    bar = tqdm(total=stream.total_lm_tokens, unit="tok", unit_scale=True, desc="cache")
    for chunk in stream.chunks():
        sums = {}
        for h, a in chunk.acts.items():
            path = shard_path(out, chunk.index, h)
            write_npy(path, to_stored(a, cfg.store_dtype))
            sums[path.name] = file_sha256(path)  # checked when a training run first maps the shard
        manifest["shards"].append(
            {
                "index": chunk.index,
                "sha256": sums,
                "vectors": int(chunk.acts[hooks[0]].shape[0]),
                "lm_tokens": chunk.lm_tokens,
                "excluded": chunk.excluded,
            }
        )
        bar.update(chunk.lm_tokens)
    bar.close()
    wall = time.time() - t0
    lm_tokens = sum(s["lm_tokens"] for s in manifest["shards"])
    manifest |= {
        "complete": True,
        "lm_tokens": lm_tokens,
        "vectors": sum(s["vectors"] for s in manifest["shards"]),
        "wall_s": wall,
        "tokens_per_s": lm_tokens / max(wall, 1e-9),
        "bytes": sum(p.stat().st_size for p in out.glob("shard_*.npy")),
    }
    write_json(out / MANIFEST, manifest)
    folder.done()
    return out


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise UserError(
            f"{folder} is not an activation cache (no {MANIFEST}; make one with `saelab cache-activations`)"
        )
    m = read_json(folder / MANIFEST)
    if m.get("kind") != "saelab activation cache":
        raise UserError(f"{folder / MANIFEST} is not an activation-cache manifest")
    if m.get("format_version", 0) > CACHE_FORMAT:
        raise UserError(f"{folder} uses cache format {m['format_version']}; this saelab reads up to {CACHE_FORMAT}")
    if not m.get("complete"):
        raise UserError(f"activation cache {folder} is incomplete (the writing run stopped early); rebuild it")
    return m


def same_model(spec: str, m: dict) -> bool:
    cached = m["model"]["spec"]
    if spec == cached:
        return True
    a, b = Path(spec), Path(cached)
    return a.exists() and b.exists() and a.resolve() == b.resolve()


class CachedActivationStream:
    """ActivationStream's interface over a cache folder: chunks of shuffled activation vectors."""

    def __init__(
        self,
        folder: Path,
        manifest: dict,
        hookpoints: list[str],
        context: int,
        rows_per_batch: int,
        buffer_batches: int,
        n_rows: int,
        seed: int,
        device: str = "cpu",
    ):
        self.folder, self.m, self.hookpoints, self.device, self.seed = Path(folder), manifest, hookpoints, device, seed
        self.context, self.n_rows = context, n_rows
        self.rows_per_chunk = rows_per_batch * buffer_batches
        self.n_chunks = -(-n_rows // self.rows_per_chunk)
        self.total_lm_tokens = n_rows * context
        shards = manifest["shards"]
        lm_total, vec_total = sum(s["lm_tokens"] for s in shards), sum(s["vectors"] for s in shards)
        self.valid_fraction = vec_total / max(1, lm_total)
        self.epochs = self.total_lm_tokens / max(1, lm_total)
        # blocks: (shard, start, stop) spans of <= BLOCK vectors
        self.blocks = np.array(
            [(s["index"], a, min(a + BLOCK, s["vectors"])) for s in shards for a in range(0, s["vectors"], BLOCK)],
            dtype=np.int64,
        )
        self.vectors_per_chunk = max(1, round(self.rows_per_chunk * context * self.valid_fraction))
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    def _map(self, shard: int, hook: str) -> np.ndarray:
        key = (shard, hook)
        if key not in self._maps:
            p = shard_path(self.folder, shard, hook)
            if not p.exists():
                raise UserError(f"activation cache {self.folder} lacks {p.name}; the cache is damaged, rebuild it")
            # a shard cut short (a half copy) is an error here, never vectors read past its end
            entry = next(s for s in self.m["shards"] if s["index"] == shard)
            vectors = entry["vectors"]
            a = read_npy(p, (vectors, self.m.get("widths", {}).get(hook)))
            check_sha256(p, (entry.get("sha256") or {}).get(p.name), str(self.folder / MANIFEST))  # once per open
            self._maps[key] = a
        return self._maps[key]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))

    def lm_tokens_before(self, c: int) -> int:
        return c * self.rows_per_chunk * self.context

    def chunk(self, c: int) -> Chunk:
        """Vectors [c * V, c * V + v) of the block-permuted stream (V = vectors per full chunk; the
        last chunk, with fewer LM rows, takes its proportional share v)."""
        rows = min(self.rows_per_chunk, self.n_rows - c * self.rows_per_chunk)
        lm_tokens = rows * self.context
        want = self.vectors_per_chunk if rows == self.rows_per_chunk else max(1, round(lm_tokens * self.valid_fraction))
        start = c * self.vectors_per_chunk
        parts: dict[str, list[np.ndarray]] = {h: [] for h in self.hookpoints}
        per_epoch = int(self.blocks[:, 2].sum() - self.blocks[:, 1].sum())
        got = 0
        epoch, pos = divmod(start, per_epoch)
        while got < want:
            order = self._epoch_order(epoch)
            lens = self.blocks[order, 2] - self.blocks[order, 1]
            ends = np.cumsum(lens)
            b = int(np.searchsorted(ends, pos, side="right"))
            while b < len(order) and got < want:
                shard, lo, hi = self.blocks[order[b]]
                lo = lo + (pos - (ends[b] - lens[b]))
                take = min(hi - lo, want - got)
                for h in self.hookpoints:
                    parts[h].append(np.asarray(self._map(int(shard), h)[lo : lo + take]))
                got, pos, b = got + take, pos + take, b + 1
            epoch, pos = epoch + 1, 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        perm = torch.randperm(want, generator=g)
        dtype = self.m.get("dtype", "float32")
        perm = perm.to(self.device)  # shuffled on the device (pinned, asynchronous copy on CUDA)
        acts = {h: to_device(from_stored(np.concatenate(p), dtype), self.device)[perm] for h, p in parts.items()}
        return Chunk(c, acts, lm_tokens, max(0, lm_tokens - want))

    def chunks(self, start: int = 0) -> Iterator[Chunk]:
        for c in range(start, self.n_chunks):
            yield self.chunk(c)


def cache_sites(folder: Path, m: dict, patterns: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Training sites (input, transcoder output) from hookpoint patterns, resolved against the cache."""
    cached = m["hookpoints"]

    def resolve(p: str) -> list[str]:
        hits = (
            [h for h in cached if glob_regex(p).fullmatch(h)]
            if any(c in p for c in "*?")
            else [p]
            if p in cached
            else []
        )
        if not hits:
            raise UserError(f"hookpoint {p!r} is not in activation cache {folder} (it holds {', '.join(cached)})")
        return hits

    sites = []
    for a, b in patterns:
        ra = resolve(a)
        rb = resolve(b) if b else [None] * len(ra)
        if len(ra) != len(rb):
            raise UserError(f"transcoder {a}->{b}: patterns match {len(ra)} and {len(rb)} sites")
        sites += list(zip(ra, rb))
    return sites


def cache_summary(folder: Path) -> str:
    m = read_manifest(folder)
    gb = m.get("bytes", 0) / 2**30
    return (
        f"{folder}: {m['lm_tokens']:,} LM tokens -> {m['vectors']:,} vectors x {len(m['hookpoints'])} hookpoints "
        f"({gb:.2f} GiB) from {m['model']['spec']}; {m['tokens_per_s']:.0f} tok/s"
    )
