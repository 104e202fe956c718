"""Build a latent cache (the format and the reader are in latent_cache.py): run the model once over
N tokens and record every nonzero activation of each dictionary, chunk by chunk, resumably.

`write_latent_cache(LatentCacheConfig)` reads as its steps: check the inputs (`_plan`, no model) ->
open the output folder (refuse / replace / resume, out_folder.py) -> open the run (model, dictionaries,
rows, manifest) -> collect chunk by chunk (`_collect`) -> merge into shards (`_finalise`) -> summarise."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..models import LoadedModel
from ..out_folder import LATENT_CACHE, open_out
from ..sae.folder import Provenance, open_sae, open_shared_data, shared_provenance, unique_names
from ..sinks import SinkConfig
from ..storage import fingerprint, read_json, read_npy, write_json, write_tensors
from .cache_config import LatentCacheConfig
from .latent_cache import FORMAT_VERSION, MANIFEST, check_files, dict_dirname, save_npy

# ====================================================================== dictionaries


@dataclass
class _Dictionary:
    """One thing to cache: encode(acts [B*T, d]) -> (flat row index, latent, value) of active entries."""

    name: str
    kind: str  # sae | neurons
    source: str
    hookpoint: str
    d_sae: int
    steer_hookpoint: str | None
    decoder: torch.Tensor | None  # [d_sae, d_model]
    encode: Callable
    extra: dict = field(default_factory=dict)

    def info(self, shard_size: int) -> dict:
        return {
            "kind": self.kind,
            "source": self.source,
            "hookpoint": self.hookpoint,
            "d_sae": self.d_sae,
            "steer_hookpoint": self.steer_hookpoint,
            "shard_size": shard_size,
            "n_shards": (self.d_sae + shard_size - 1) // shard_size,
            "dir": dict_dirname(self.name),
            **self.extra,
        }


def _refuse_crosscoder(folder, sae) -> None:
    if not type(sae).capabilities.latent_cache:  # a crosscoder: no one site to record examples at or steer
        raise UserError(
            f"{folder}: a --arch {sae.cfg.arch} dictionary has no one site (a crosscoder reads several at "
            f"once); the latent cache (and so explain, dashboards and steering) records one site per "
            f"dictionary and does not support it"
        )


def _sae_dictionary(folder: Path, name: str, sae) -> _Dictionary:

    def encode(x):  # x [N, d_in] raw -> flat (row, latent, value) with value > 0
        rows, idx, vals = sae.encode_raw(x).flat()
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep]

    steer = sae.cfg.out_hookpoint or sae.cfg.hookpoint
    return _Dictionary(
        name, "sae", str(folder), sae.cfg.hookpoint, sae.cfg.d_sae, steer, sae.W_dec.detach().clone(), encode
    )


def _neuron_dictionary(model, hookpoint: str, k: int) -> _Dictionary:
    """The units at `hookpoint` as a dictionary: top-k per token (k=0: every positive value).

    For `X:input` with X a Linear or Conv1D (e.g. `mlp.down_proj:input`), neuron j's output direction is
    column j of X.weight, added at X's output: that is the 'decoder' used for hard negatives and
    for the intervention scorer."""
    from ..models import hookpoint_widths, input_unit_directions

    d = hookpoint_widths(model, [hookpoint])[hookpoint]
    if k < 0 or k > d:
        raise UserError(f"--neuron-k must be between 0 and the width of {hookpoint} ({d})")
    decoder, steer = None, None
    if hookpoint.endswith(":input"):
        decoder = input_unit_directions(model.get_submodule(hookpoint.removesuffix(":input")), d)  # [d_mlp, d_model]
        if decoder is not None:
            steer = hookpoint.removesuffix(":input")

    def encode(x):  # x [N, d]
        if k:
            vals, idx = x.topk(k, dim=-1)
            rows = torch.arange(x.shape[0]).repeat_interleave(k)
            vals, idx = vals.reshape(-1), idx.reshape(-1)
        else:
            rows, idx = (x > 0).nonzero(as_tuple=True)
            vals = x[rows, idx]
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep]

    return _Dictionary(
        f"neurons:{hookpoint}", "neurons", f"neurons:{hookpoint}", hookpoint, d, steer, decoder, encode, {"neuron_k": k}
    )


# ====================================================================== building


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


# ====================================================================== the steps


@dataclass
class _Plan:
    """Everything known before the model loads: the folders, the data they agree on, the identity."""

    folders: list
    sae_dirs: list[Path]
    names: list[str]
    prov: Provenance
    sink: SinkConfig
    request: dict
    identity: str


@dataclass
class _Run:
    """An opened cache run: the model, what to record, the rows, and the manifest that tracks progress."""

    cfg: LatentCacheConfig
    out: Path
    lm: LoadedModel
    dicts: list[_Dictionary]
    hookpoints: list[str]
    sink: SinkConfig
    context: int
    n_rows: int
    manifest: dict

    @property
    def n_chunks(self) -> int:
        return (self.n_rows + self.cfg.chunk_rows - 1) // self.cfg.chunk_rows


def _plan(cfg: LatentCacheConfig, sink: SinkConfig | None) -> _Plan:
    """Check the inputs (SAE folders, the data they agree on) and name the cache by its request."""
    sae_dirs = [Path(d) for d in cfg.sae_dirs]
    folders = [open_sae(d) for d in sae_dirs]  # bad folders fail here, before the model loads
    for d, f in zip(sae_dirs, folders):
        _refuse_crosscoder(d, f.sae)
    prov = shared_provenance(folders, cfg.model, cfg.corpus, cfg.context)
    sink = sink or cfg.sink(prov.sink)  # the first folder's (SinkConfig() without folders)
    names = unique_names([d.name for d in sae_dirs])
    request = {
        "sae_dirs": [str(d.resolve()) for d in sae_dirs],
        "names": names,
        "tokens": cfg.tokens,
        "neurons": cfg.neurons,
        "neuron_k": cfg.neuron_k if cfg.neurons else None,
        "model_spec": prov.model_spec,
        "corpus": prov.corpus,
        "context": prov.context,
        "chunk_rows": cfg.chunk_rows,
        "shard_size": cfg.shard_size,
        "sink": asdict(sink),
        "split": cfg.split,
    }
    # rows of another split or text field make another cache (absent at the defaults: identities of older caches hold)
    request |= {
        k: v
        for k, v in (("heldout_fraction", prov.heldout_fraction), ("text_field", prov.text_field))
        if v != getattr(Provenance(), k)
    }
    return _Plan(folders, sae_dirs, names, prov, sink, request, fingerprint(request))


def _already_complete(out: Path, progress: bool) -> bool:
    """A resumed folder whose cache is complete (and whose files are whole): nothing to do."""
    old = read_json(out / MANIFEST)
    if not old.get("complete"):
        return False
    try:
        check_files(out, old)
    except UserError as e:
        raise UserError(f"{e}. The cache in {out} is damaged; pass --overwrite to rebuild it") from e
    shutil.rmtree(out / "chunks", ignore_errors=True)
    if progress:
        print(f"saelab: {out} is already a complete cache for these arguments; nothing to do")
    return True


def _select_rows(cfg: LatentCacheConfig, rows_all, context: int, corpus: str) -> np.ndarray:
    """The corpus rows to cache, in a fixed order: held-out first, then training rows (or one split)."""
    order = {
        "heldout-first": np.concatenate([rows_all.heldout_rows, rows_all.train_rows]),
        "heldout": rows_all.heldout_rows,
        "train": rows_all.train_rows,
    }[cfg.split]
    n_rows = max(1, cfg.tokens // context)
    if n_rows > len(order):
        raise UserError(
            f"--tokens {cfg.tokens:,} needs {n_rows} rows of {context} but the corpus {corpus!r} has "
            f"{len(order)} rows in split {cfg.split!r}; ask for at most {len(order) * context:,} tokens"
        )
    return np.asarray(order[:n_rows], dtype=np.int64)


def _new_manifest(
    plan: _Plan, data, dicts: list[_Dictionary], hookpoints: list[str], n_rows: int, cfg: LatentCacheConfig
) -> dict:
    from .. import __version__

    p = plan.prov
    return {
        "format_version": FORMAT_VERSION,
        "saelab_version": __version__,
        "identity": plan.identity,
        "request": plan.request,
        "model_spec": p.model_spec,
        "model_name": data.lm.name,
        "corpus": p.corpus,
        "data_fingerprint": data.rows.fingerprint,
        "heldout_fraction": p.heldout_fraction,
        "data_matches_training": data.matches_training,
        "context": p.context,
        "n_rows": n_rows,
        "n_tokens": n_rows * p.context,
        "sink": asdict(plan.sink),
        "hookpoints": hookpoints,
        "chunk_rows": cfg.chunk_rows,
        "n_chunks": (n_rows + cfg.chunk_rows - 1) // cfg.chunk_rows,
        "chunks_done": 0,
        "complete": False,
        "n_positions": 0,
        "wall_s": 0.0,
        "dictionaries": {d.name: d.info(cfg.shard_size) for d in dicts},
    }


def _open_run(cfg: LatentCacheConfig, plan: _Plan, folder, loaded_model: LoadedModel | None) -> _Run:
    """Load the model and rows, build the dictionaries, and start (or reopen) the manifest."""
    from ..models import depth_order, resolve_hookpoints

    data = open_shared_data(
        plan.folders,
        model=cfg.model,
        corpus=cfg.corpus,
        context=cfg.context,
        loaded_model=loaded_model,
        dtype=cfg.dtype,
    )
    lm = data.lm  # the SAEs' sites and widths are checked against the model there
    hookpoints = resolve_hookpoints(
        lm.model, [f.sae.cfg.hookpoint for f in plan.folders] + ([cfg.neurons] if cfg.neurons else [])
    )
    dicts = [_sae_dictionary(d, name, f.sae) for d, name, f in zip(plan.sae_dirs, plan.names, plan.folders)]
    if cfg.neurons:
        dicts.append(_neuron_dictionary(lm.model, cfg.neurons, cfg.neuron_k))
    hookpoints = depth_order(lm.model, hookpoints)
    context = plan.prov.context
    row_ids = _select_rows(cfg, data.rows, context, plan.prov.corpus)
    out = folder.prepare()  # --overwrite: the old cache's files go now, not before the checks above
    mpath = out / MANIFEST
    manifest = read_json(mpath) if mpath.exists() else None
    if manifest is None:
        save_npy(out / "tokens.npy", np.asarray(data.rows.tokens[row_ids], dtype=np.int32))
        save_npy(out / "row_ids.npy", row_ids)
        manifest = _new_manifest(plan, data, dicts, hookpoints, len(row_ids), cfg)
        for d in dicts:
            (out / "dicts" / dict_dirname(d.name)).mkdir(parents=True, exist_ok=True)
            if d.decoder is not None:
                write_tensors(out / "dicts" / dict_dirname(d.name) / "decoder.safetensors", {"W_dec": d.decoder})
        write_json(mpath, manifest)
    return _Run(cfg, out, lm, dicts, hookpoints, plan.sink, context, len(row_ids), manifest)


def _encode_batch(run: _Run, ids: torch.Tensor, b0: int, recs: dict, specials: list[int]) -> np.ndarray:
    """One forward over rows [b0, b0 + B): each dictionary's active (row, pos, latent, value) appended to
    `recs`; returns the excluded positions bool [B, T]."""
    from ..models import collect_activations
    from ..sinks import excluded_positions

    acts = collect_activations(run.lm.model, ids, run.hookpoints)
    excl = excluded_positions([acts[h] for h in run.hookpoints], ids, run.sink, specials)  # [B, T]
    keep_pos = ~excl.reshape(-1)
    for d in run.dicts:
        x = acts[d.hookpoint].reshape(-1, acts[d.hookpoint].shape[-1]).float()  # [B*T, d]
        flat_row, lat, val = d.encode(x)
        m = keep_pos[flat_row]
        flat_row, lat, val = flat_row[m], lat[m], val[m]
        r = recs[d.name]
        r[0].append(b0 + flat_row // run.context)
        r[1].append(flat_row % run.context)
        r[2].append(lat)
        r[3].append(val)
    return excl.numpy()


def _collect(run: _Run, progress: bool) -> None:
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


def _finalise(run: _Run) -> None:
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


def write_latent_cache(
    cfg: LatentCacheConfig,
    sink: SinkConfig | None = None,
    progress: bool = True,
    loaded_model: LoadedModel | None = None,
) -> Path:
    """Cache the active latents of each SAE folder (and optionally the neurons at `cfg.neurons`) over
    `cfg.tokens` tokens of the corpus. See the module docstring for the format. Returns the folder.

    Model, corpus, context, held-out fraction and text field are the ones the SAE folders record
    (`open_shared_data`; `cfg.model`, `.corpus`, `.context` override them), so held-out rows are rows the
    SAEs never trained on. Rows come in a fixed order: the held-out rows first, then the training
    rows (`split="heldout-first"`), or only `heldout` / `train` rows. Rerunning with the same config
    resumes an interrupted run; a different config on an existing cache needs `overwrite=True`.
    `sink`: these sink rules instead of the config's; `loaded_model`: that model, already loaded."""
    cfg.validate()
    plan = _plan(cfg, sink)
    folder = open_out(cfg.out, LATENT_CACHE, cfg.overwrite, plan.identity)
    if folder.resume and _already_complete(folder.path, progress):
        return folder.path
    run = _open_run(cfg, plan, folder, loaded_model)
    _collect(run, progress)
    _finalise(run)
    if progress:
        n = len(run.dicts)
        print(
            f"saelab: cached {n} dictionar{'y' if n == 1 else 'ies'} over {run.manifest['n_tokens']:,} "
            f"tokens ({run.manifest['tokens_per_s']:.0f} tokens/s) in {run.out}"
        )
    return run.out


def build_latent_cache(
    sae_dirs: list,
    tokens: int,
    out,
    *,
    sink: SinkConfig | None = None,
    progress: bool = True,
    loaded_model: LoadedModel | None = None,
    **options,
) -> Path:
    """`write_latent_cache` with the config's fields as keywords (a notebook's shorthand):
    `build_latent_cache([sae], 100_000, "cache", neurons="model.layers.6.mlp.down_proj:input")`."""
    cfg = LatentCacheConfig(sae_dirs=[str(d) for d in sae_dirs or []], tokens=tokens, out=str(out), **options)
    return write_latent_cache(cfg, sink, progress, loaded_model)
