"""Latent activation cache: every nonzero (row, position, latent, value) of one or more dictionaries
over N tokens, stored sparsely, sharded by latent range, with the tokens stored once.

Why: explaining, scoring and dashboards all need "where does latent j fire, and how strongly";
running the LM again for each latent would cost hours. The cache answers that with one slice.

Python API (stable; other modules and the dashboards read caches only through it):

    write_latent_cache(LatentCacheConfig(sae_dirs=[...], tokens=N, out=...)) -> Path   (latent_cache_writer.py)
        Run the model once over `tokens` tokens and cache every SAE in `sae_dirs` (folders in our
        format) and, with `neurons="model.layers.6.mlp.down_proj:input"`, the MLP neurons there
        (top-`neuron_k` per token by value; neuron_k=0 keeps every positive value).
        Resumable: rerunning the same call after a kill continues from the last finished chunk.
        LatentCacheConfig (cache_config.py) is also what `saelab cache` takes.

    cache = LatentCache.open(path)
    cache.tokens                      np.int32 [rows, ctx]    (memory-mapped)
    cache.excluded                    bool [rows, ctx]        sink/outlier positions (never recorded)
    cache.sae_names                   list[str]               dictionaries in the cache (SAEs and neurons)
    cache.d_sae(name)                 int                     latents of that dictionary
    cache.latent_records(name, j)     (rows int64 [n], positions int64 [n], values float32 [n]),
                                      sorted by (row, position)
    cache.fire_counts(name)           np.int64 [d_sae]        positions where each latent is > 0
    cache.max_activation(name)        np.float32 [d_sae]      largest value per latent (0 if never fired)
    cache.decoder(name)               torch.float32 [d_sae, d_model] or None: each latent's output
                                      direction (SAE W_dec; a Linear's weight columns for neurons)
    cache.decoder_norms(name)         torch.float32 [d_sae, L] or None: a cross-layer transcoder's decoder
                                      norm of each latent into each of its L layers (0 before its own)
    cache.steer_site(name, j)         str or None: where latent j writes its `decoder` row (a CLT: its own
                                      layer's MLP output; else steer_hookpoint)
    cache.info(name)                  dict: kind (sae|neurons), source, hookpoint, steer_hookpoint, d_sae
                                      (a CLT: `clt` {n_layers, n_per_layer, input_sites, output_sites})

A cross-layer transcoder (sae/clt.py) is ONE dictionary of L*n latents, global id g = l*n + j, latent g
encoded from layer l's MLP input (hookpoint: the L input sites joined by '+', all collected in the same
forward); its `decoder` row is its decoder into its own layer's MLP output (steer_hookpoint: the L output
sites joined by '+'), and decoder_norms.safetensors says how strongly it writes to every layer
(features/clt_features.py). A replacement folder (sae/replacement.py) caches each of its dictionaries.
    cache.manifest                    dict: the manifest below

On-disk format (version 1; safetensors and .npy only, never pickle):

    CACHE/manifest.json   {format_version, model_spec, model_name, corpus, data_fingerprint, heldout_fraction,
                           data_matches_training (rows the SAEs trained on? null: unknown), context, n_rows, n_tokens,
                           n_positions (non-excluded), sink{first_positions, mask_special, norm_factor},
                           chunk_rows, chunks_done, n_chunks, complete, dictionaries{name: info}, ...}
    CACHE/tokens.npy      int32 [rows, ctx]   the token ids (row r of the cache)
    CACHE/row_ids.npy     int64 [rows]        which row of the corpus token file each cache row is
    CACHE/excluded.npy    bool  [rows, ctx]   True at sink/outlier positions (SinkConfig rules)
    CACHE/dicts/NAME/shard_SSSSS.safetensors  latents [S*shard_size, (S+1)*shard_size):
        latent_offsets int64 [shard_size + 1]  records of latent S*shard_size+i are
                                               [latent_offsets[i], latent_offsets[i+1])
        row int32 [n], pos int32 [n], value float32 [n]   sorted by (latent, row, pos)
    CACHE/dicts/NAME/stats.safetensors   fire_counts int64 [d_sae], max_activation float32 [d_sae],
                                         sum_activation float64 [d_sae]
    CACHE/dicts/NAME/decoder.safetensors W_dec float32 [d_sae, d_model] (absent if unknown)
    CACHE/dicts/NAME/decoder_norms.safetensors  norms float32 [d_sae, L] (a CLT only: per target layer)

While running, finished chunks live in CACHE/chunks/NAME/chunk_CCCCC.safetensors (records of
`chunk_rows` rows sorted by latent, with `shard_offsets`); memory holds one chunk at a time, and
the final merge holds one shard at a time. `chunks_done` in the manifest is advanced only after a
chunk's files are on disk, so a kill loses at most the chunk in flight.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..storage import read_json, read_npy, read_tensors, write_npy

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DECODER_NORMS = "decoder_norms.safetensors"  # a CLT's [d_sae, L] decoder norms (optional file)


def dict_dirname(name: str) -> str:
    """A file-system-safe folder name for a dictionary name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def save_npy(path: Path, arr: np.ndarray) -> None:
    write_npy(path, arr)  # atomic; a disk-full write leaves no temporary file behind


# ====================================================================== reading


def check_files(path: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """tokens.npy and excluded.npy of a complete cache, checked against the manifest's rows and
    context (a truncated copy is an error, never 'a complete cache')."""
    shape = (int(manifest["n_rows"]), int(manifest["context"]))
    return read_npy(Path(path) / "tokens.npy", shape), read_npy(Path(path) / "excluded.npy", shape)


class LatentCache:
    """Read access to a finished cache folder (see the module docstring for the format)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.tokens, self.excluded = check_files(self.path, manifest)  # int32, bool [rows, ctx]
        self.sae_names = list(manifest["dictionaries"])
        self._shards: dict[tuple[str, int], tuple] = {}
        self._stats: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, path) -> LatentCache:
        path = Path(path)
        m = read_json(path / MANIFEST)
        if m.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"{path} uses cache format {m['format_version']}; this saelab reads up to {FORMAT_VERSION}")
        if not m.get("complete"):
            raise UserError(
                f"{path} is an unfinished latent cache ({m.get('chunks_done', 0)}/{m.get('n_chunks')} "
                f"chunks); rerun the same `saelab cache` command to finish it"
            )
        return cls(path, m)

    # ------------------------------------------------------------ metadata
    def _check(self, name: str) -> dict:
        if name not in self.manifest["dictionaries"]:
            raise UserError(f"dictionary {name!r} is not in cache {self.path}; it holds {self.sae_names}")
        return self.manifest["dictionaries"][name]

    def info(self, name: str) -> dict:
        return dict(self._check(name))

    def d_sae(self, name: str) -> int:
        return int(self._check(name)["d_sae"])

    def _dir(self, name: str) -> Path:
        return self.path / "dicts" / dict_dirname(name)

    # ------------------------------------------------------------ records
    def _shard(self, name: str, s: int):
        """An open safetensors handle and the latent offsets of one shard (records are read lazily,
        so memory stays bounded by the records asked for, whatever the cache size)."""
        from safetensors import SafetensorError, safe_open

        key = (name, s)
        if key not in self._shards:
            if len(self._shards) >= 8:
                self._shards.pop(next(iter(self._shards)))
            path = self._dir(name) / f"shard_{s:05d}.safetensors"
            if not path.exists():
                raise UserError(f"{path} is missing: the cache {self.path} is incomplete")
            try:
                h = safe_open(str(path), "pt")
                self._shards[key] = (h, h.get_tensor("latent_offsets"))
            except (SafetensorError, OSError) as e:
                raise UserError(f"{path} is not a readable safetensors file ({e})") from e
        return self._shards[key]

    def latent_records(self, name: str, latent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows int64 [n], positions int64 [n], values float32 [n]) where `latent` is active."""
        info = self._check(name)
        if not 0 <= latent < info["d_sae"]:
            raise UserError(f"latent {latent} is outside 0..{info['d_sae'] - 1} for {name}")
        size = info["shard_size"]
        h, off = self._shard(name, latent // size)
        i = latent % size
        a, b = int(off[i]), int(off[i + 1])
        return (
            h.get_slice("row")[a:b].numpy().astype(np.int64),
            h.get_slice("pos")[a:b].numpy().astype(np.int64),
            h.get_slice("value")[a:b].numpy().astype(np.float32),
        )

    def _stat(self, name: str, key: str) -> np.ndarray:
        self._check(name)
        if name not in self._stats:
            self._stats[name] = read_tensors(self._dir(name) / "stats.safetensors")
        return self._stats[name][key].numpy()

    def fire_counts(self, name: str) -> np.ndarray:
        return self._stat(name, "fire_counts")

    def max_activation(self, name: str) -> np.ndarray:
        return self._stat(name, "max_activation")

    def firing_frequency(self, name: str) -> np.ndarray:
        """Fraction of recorded (non-sink) positions on which each latent fires."""
        return self.fire_counts(name) / max(1, self.manifest["n_positions"])

    def decoder(self, name: str) -> torch.Tensor | None:
        self._check(name)
        p = self._dir(name) / "decoder.safetensors"
        return read_tensors(p)["W_dec"] if p.exists() else None

    def decoder_norms(self, name: str) -> torch.Tensor | None:
        self._check(name)
        p = self._dir(name) / DECODER_NORMS
        return read_tensors(p)["norms"] if p.exists() else None

    def steer_site(self, name: str, latent: int) -> str | None:
        info = self._check(name)
        clt = info.get("clt")
        if clt:
            return clt["output_sites"][latent // int(clt["n_per_layer"])]
        return info.get("steer_hookpoint")

    def __repr__(self) -> str:
        return (
            f"LatentCache({self.path}, {self.manifest['n_rows']} rows x {self.manifest['context']} tokens, "
            f"dictionaries={self.sae_names})"
        )
