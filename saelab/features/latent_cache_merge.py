"""Collecting and merging a latent cache (the format is in latent_cache.py): once the writer
(latent_cache_writer.py) has opened a run (`CacheRun`), `collect` runs the model chunk by chunk and writes
each dictionary's active entries per chunk (resumable: the manifest counts finished chunks), and
`finalise` merges the chunk files into one file per latent shard with the per-latent statistics."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models import LoadedModel
from ..sinks import SinkConfig
from ..storage import read_npy, write_json, write_tensors
from .cache_config import LatentCacheConfig
from .latent_cache import MANIFEST, dict_dirname, save_npy
from .latent_dictionaries import Dictionary


@dataclass
class CacheRun:
    """An opened cache run: the model, what to record, the rows, and the manifest that tracks progress."""

    cfg: LatentCacheConfig
    out: Path
    lm: LoadedModel
    dicts: list[Dictionary]
    hookpoints: list[str]
    sink: SinkConfig
    context: int
    n_rows: int
    manifest: dict

    @property
    def n_chunks(self) -> int:
        return (self.n_rows + self.cfg.chunk_rows - 1) // self.cfg.chunk_rows


def _encode_batch(run: CacheRun, ids: torch.Tensor, b0: int, recs: dict, specials: list[int]) -> np.ndarray:
    """One forward over rows [b0, b0 + B): each dictionary's active (row, pos, latent, value) appended to
    `recs`; returns the excluded positions bool [B, T]."""
    from ..models import collect_activations
    from ..sinks import excluded_positions

    acts = collect_activations(run.lm.model, ids, run.hookpoints)
    excl = excluded_positions([acts[h] for h in run.hookpoints], ids, run.sink, specials)  # [B, T]
    keep_pos = ~excl.reshape(-1)
    for d in run.dicts:
        xs = [acts[h].reshape(-1, acts[h].shape[-1]).float() for h in d.sites]  # [B*T, d] per site
        flat_row, lat, val = d.encode(*xs)
        m = keep_pos[flat_row]
        flat_row, lat, val = flat_row[m], lat[m], val[m]
        r = recs[d.name]
        r[0].append(b0 + flat_row // run.context)
        r[1].append(flat_row % run.context)
        r[2].append(lat)
        r[3].append(val)
    return excl.numpy()


def collect(run: CacheRun, progress: bool) -> None:
    """The chunks not done yet, one at a time: each dictionary's chunk file, the excluded positions,
    then the manifest's `chunks_done` (a killed run resumes from the last finished chunk)."""
    from tqdm import tqdm

    from ..sinks import special_ids

    cfg, out, manifest, ctx = run.cfg, run.out, run.manifest, run.context
    toks = read_npy(out / "tokens.npy", (run.n_rows, ctx))
    specials = special_ids(run.lm.tokenizer)
    excl_dir = out / "chunks" / "_excluded"
    for d in ["_excluded"] + [dict_dirname(d.name) for d in run.dicts]:
        (out / "chunks" / d).mkdir(parents=True, exist_ok=True)
    t0, done = time.time(), manifest["chunks_done"]
    bar = tqdm(
        total=run.n_rows * ctx,
        initial=min(run.n_rows, done * cfg.chunk_rows) * ctx,
        unit="tok",
        desc="caching",
        disable=not progress,
        unit_scale=True,
    )
    for c in range(done, run.n_chunks):
        r0, r1 = c * cfg.chunk_rows, min(run.n_rows, (c + 1) * cfg.chunk_rows)
        recs = {d.name: ([], [], [], []) for d in run.dicts}
        excl_chunk = np.zeros((r1 - r0, ctx), dtype=bool)
        with torch.no_grad():
            for b0 in range(r0, r1, cfg.batch_rows):
                b1 = min(r1, b0 + cfg.batch_rows)
                ids = torch.from_numpy(np.asarray(toks[b0:b1], dtype=np.int64))  # [B, T]
                excl_chunk[b0 - r0 : b1 - r0] = _encode_batch(run, ids, b0, recs, specials)
                bar.update((b1 - b0) * ctx)
        for d in run.dicts:
            _write_chunk(
                out / "chunks" / dict_dirname(d.name) / f"chunk_{c:05d}.safetensors",
                tuple(torch.cat(x) for x in recs[d.name]),
                d.d_sae,
                cfg.shard_size,
            )
        save_npy(excl_dir / f"chunk_{c:05d}.npy", excl_chunk)
        manifest["chunks_done"] = c + 1
        manifest["n_positions"] += int((~excl_chunk).sum())
        manifest["wall_s"] += time.time() - t0
        t0 = time.time()
        write_json(out / MANIFEST, manifest)
    bar.close()


def finalise(run: CacheRun) -> None:
    """Chunks -> shards per dictionary, excluded.npy, `complete: true`; idempotent (a rerun redoes it)."""
    out, manifest, t0 = run.out, run.manifest, time.time()
    excl_dir = out / "chunks" / "_excluded"
    save_npy(
        out / "excluded.npy", np.concatenate([np.load(excl_dir / f"chunk_{c:05d}.npy") for c in range(run.n_chunks)])
    )
    for d in run.dicts:
        _merge_chunks(
            out / "chunks" / dict_dirname(d.name),
            out / "dicts" / dict_dirname(d.name),
            run.n_chunks,
            d.d_sae,
            run.cfg.shard_size,
        )
    manifest["complete"] = True
    manifest["merge_wall_s"] = time.time() - t0
    manifest["tokens_per_s"] = manifest["n_tokens"] / max(1e-9, manifest["wall_s"])
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(out / "chunks", ignore_errors=True)


def _merge_chunks(chunk_dir: Path, dict_dir: Path, n_chunks: int, d_sae: int, shard_size: int) -> None:
    """Chunk files (each sorted by latent) -> one file per latent shard; memory: one shard."""
    from safetensors import safe_open

    n_shards = (d_sae + shard_size - 1) // shard_size
    fire = np.zeros(d_sae, np.int64)
    vmax = np.zeros(d_sae, np.float32)
    vsum = np.zeros(d_sae, np.float64)
    files = [chunk_dir / f"chunk_{c:05d}.safetensors" for c in range(n_chunks)]
    for s in range(n_shards):
        lo, hi = s * shard_size, min(d_sae, (s + 1) * shard_size)
        parts = {k: [] for k in ("latent", "row", "pos", "value")}
        for f in files:
            with safe_open(str(f), "pt") as h:
                off = h.get_tensor("shard_offsets")
                a, b = int(off[s]), int(off[s + 1])
                for k in parts:
                    parts[k].append(h.get_slice(k)[a:b])
        lat, row, pos, val = (torch.cat(parts[k]) for k in ("latent", "row", "pos", "value"))
        # sort by (latent, row, pos): chunks are in row order already, so a stable sort by latent suffices
        order = torch.sort(lat, stable=True).indices
        lat, row, pos, val = lat[order], row[order], pos[order], val[order]
        counts = torch.bincount(lat - lo, minlength=shard_size)[:shard_size]
        offsets = torch.zeros(shard_size + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        write_tensors(
            dict_dir / f"shard_{s:05d}.safetensors", {"latent_offsets": offsets, "row": row, "pos": pos, "value": val}
        )
        n = hi - lo
        fire[lo:hi] = counts[:n].numpy()
        if len(val):
            li = (lat - lo).long()
            mx = torch.zeros(shard_size).scatter_reduce(0, li, val, "amax", include_self=True)
            vmax[lo:hi] = mx[:n].numpy()
            vsum[lo:hi] = torch.zeros(shard_size, dtype=torch.float64).index_add_(0, li, val.double())[:n].numpy()
    write_tensors(
        dict_dir / "stats.safetensors",
        {
            "fire_counts": torch.from_numpy(fire),
            "max_activation": torch.from_numpy(vmax),
            "sum_activation": torch.from_numpy(vsum),
        },
    )


def _write_chunk(path: Path, records: tuple, d_sae: int, shard_size: int) -> None:
    """One chunk of one dictionary: records (row, pos, latent, value) sorted by latent, with the offset of
    each latent shard (what `_merge_chunks` slices)."""
    rows, pos, lat, val = records
    n_shards = (d_sae + shard_size - 1) // shard_size
    order = torch.sort(lat, stable=True).indices
    lat = lat[order]
    bounds = torch.arange(n_shards + 1) * shard_size
    shard_offsets = torch.searchsorted(lat, bounds)
    write_tensors(
        path,
        {
            "latent": lat.to(torch.int32),
            "row": rows[order].to(torch.int32),
            "pos": pos[order].to(torch.int32),
            "value": val[order].float(),
            "shard_offsets": shard_offsets.to(torch.int64),
        },
    )
