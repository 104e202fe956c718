"""Build a latent cache (the format and the reader are in latent_cache.py): run the model once over
N tokens and record every nonzero activation of each dictionary, chunk by chunk, resumably."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..models import LoadedModel
from ..sae.folder import Provenance, open_sae, open_shared_data, shared_provenance, unique_names
from ..storage import fingerprint, read_json, read_npy, write_json, write_tensors
from .latent_cache import FORMAT_VERSION, MANIFEST, check_files, dict_dirname, save_npy


# ====================================================================== dictionaries


class _Dictionary:
    """One thing to cache: encode(acts [B*T, d]) -> (flat row index, latent, value) of active entries."""

    def __init__(self, name: str, kind: str, source: str, hookpoint: str, d_sae: int, steer_hookpoint: str | None,
                 decoder: torch.Tensor | None, encode):
        self.name, self.kind, self.source, self.hookpoint = name, kind, source, hookpoint
        self.d_sae, self.steer_hookpoint, self.decoder, self.encode = d_sae, steer_hookpoint, decoder, encode
        self.extra: dict = {}

    def info(self, shard_size: int) -> dict:
        return {"kind": self.kind, "source": self.source, "hookpoint": self.hookpoint, "d_sae": self.d_sae,
                "steer_hookpoint": self.steer_hookpoint, "shard_size": shard_size,
                "n_shards": (self.d_sae + shard_size - 1) // shard_size, "dir": dict_dirname(self.name), **self.extra}


def _refuse_crosscoder(folder, sae) -> None:
    if not type(sae).capabilities.latent_cache:  # a crosscoder: no one site to record examples at or steer
        raise UserError(f"{folder}: a --arch {sae.cfg.arch} dictionary has no one site (a crosscoder reads several at "
                        f"once); the latent cache (and so explain, dashboards and steering) records one site per "
                        f"dictionary and does not support it")


def _sae_dictionary(folder: Path, name: str, sae) -> _Dictionary:

    def encode(x):  # x [N, d_in] raw -> flat (row, latent, value) with value > 0
        rows, idx, vals = sae.encode_raw(x).flat()
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep]

    steer = sae.cfg.out_hookpoint or sae.cfg.hookpoint
    return _Dictionary(name, "sae", str(folder), sae.cfg.hookpoint, sae.cfg.d_sae, steer,
                       sae.W_dec.detach().clone(), encode)


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

    dic = _Dictionary(f"neurons:{hookpoint}", "neurons", f"neurons:{hookpoint}", hookpoint, d, steer, decoder, encode)
    dic.extra = {"neuron_k": k}
    return dic


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
        write_tensors(dict_dir / f"shard_{s:05d}.safetensors",
                      {"latent_offsets": offsets, "row": row, "pos": pos, "value": val})
        n = hi - lo
        fire[lo:hi] = counts[:n].numpy()
        if len(val):
            li = (lat - lo).long()
            mx = torch.zeros(shard_size).scatter_reduce(0, li, val, "amax", include_self=True)
            vmax[lo:hi] = mx[:n].numpy()
            vsum[lo:hi] = torch.zeros(shard_size, dtype=torch.float64).index_add_(0, li, val.double())[:n].numpy()
    write_tensors(dict_dir / "stats.safetensors", {"fire_counts": torch.from_numpy(fire),
                                                   "max_activation": torch.from_numpy(vmax),
                                                   "sum_activation": torch.from_numpy(vsum)})


def _write_chunk(path: Path, rows, pos, lat, val, d_sae: int, shard_size: int) -> None:
    n_shards = (d_sae + shard_size - 1) // shard_size
    order = torch.sort(lat, stable=True).indices
    lat = lat[order]
    bounds = torch.arange(n_shards + 1) * shard_size
    shard_offsets = torch.searchsorted(lat, bounds)
    write_tensors(path, {"latent": lat.to(torch.int32), "row": rows[order].to(torch.int32),
                         "pos": pos[order].to(torch.int32), "value": val[order].float(),
                         "shard_offsets": shard_offsets.to(torch.int64)})


def build_latent_cache(sae_dirs: list, tokens: int, out, neurons: str | None = None, neuron_k: int = 32,
                       model: str | None = None, corpus: str | None = None, context: int | None = None,
                       batch_rows: int = 16, chunk_rows: int = 256, shard_size: int = 1024, sink=None,
                       split: str = "heldout-first", overwrite: bool = False,
                       progress: bool = True, loaded_model: LoadedModel | None = None, dtype: str = "float32") -> Path:
    """Cache the active latents of each SAE folder (and optionally the neurons at `neurons`) over
    `tokens` tokens of the corpus. See the module docstring for the format. Returns the folder.

    Model, corpus, context, held-out fraction and text field are the ones the SAE folders record
    (`open_shared_data`; `model`, `corpus`, `context` override them), so held-out rows are rows the
    SAEs never trained on. Rows come in a fixed order: the held-out rows first, then the training
    rows (`split="heldout-first"`), or only `heldout` / `train` rows. Rerunning with the same arguments
    resumes an interrupted run; different arguments on an existing folder need `overwrite=True`.
    `loaded_model`: that model, already loaded (then it is not loaded again)."""
    from tqdm import tqdm

    from .. import __version__
    from ..models import collect_activations, depth_order, resolve_hookpoints
    from ..sinks import excluded_positions, special_ids

    out = Path(out)
    sae_dirs = [Path(d) for d in (sae_dirs or [])]
    if not sae_dirs and not neurons:
        raise UserError("give at least one SAE folder or --neurons HOOKPOINT")
    if tokens < 1 or batch_rows < 1 or chunk_rows < 1 or shard_size < 1:
        raise UserError("--tokens, --batch-rows, --chunk-rows and --shard-size must be positive")
    if split not in ("heldout-first", "heldout", "train"):
        raise UserError(f"--split must be heldout-first, heldout or train, not {split!r}")
    folders = [open_sae(d) for d in sae_dirs]  # bad folders fail here, before the model loads
    for d, f in zip(sae_dirs, folders):
        _refuse_crosscoder(d, f.sae)
    prov = shared_provenance(folders, model, corpus, context)
    model_spec, corpus, context = prov.model_spec, prov.corpus, prov.context
    if sink is None:
        sink = prov.sink  # the first folder's (SinkConfig() without folders)
    names = unique_names([d.name for d in sae_dirs])

    request = {"sae_dirs": [str(d.resolve()) for d in sae_dirs], "names": names, "tokens": tokens,
               "neurons": neurons, "neuron_k": neuron_k if neurons else None, "model_spec": model_spec,
               "corpus": corpus, "context": context, "chunk_rows": chunk_rows, "shard_size": shard_size,
               "sink": asdict(sink), "split": split}
    # rows of another split or text field make another cache (absent at the defaults: identities of older caches hold)
    request |= {k: v for k, v in (("heldout_fraction", prov.heldout_fraction), ("text_field", prov.text_field))
                if v != getattr(Provenance(), k)}
    ident = fingerprint(request)
    mpath = out / MANIFEST
    if out.exists() and any(out.iterdir()):
        old = read_json(mpath) if mpath.exists() else None
        if overwrite:
            shutil.rmtree(out)
        elif old is None or old.get("identity") != ident:
            raise UserError(f"{out} already holds something else (a cache made with other arguments, or other "
                            f"files); pass --overwrite to replace it, or choose another --out")
        elif old.get("complete"):
            try:
                check_files(out, old)
            except UserError as e:
                raise UserError(f"{e}. The cache in {out} is damaged; pass --overwrite to rebuild it") from e
            shutil.rmtree(out / "chunks", ignore_errors=True)
            if progress:
                print(f"saelab: {out} is already a complete cache for these arguments; nothing to do")
            return out
    data = open_shared_data(folders, model=model, corpus=corpus, context=context, loaded_model=loaded_model,
                            dtype=dtype)
    lm, rows_all = data.lm, data.rows  # the SAEs' sites and widths are checked against the model there
    hookpoints = resolve_hookpoints(lm.model, [f.sae.cfg.hookpoint for f in folders] + ([neurons] if neurons else []))
    dicts = [_sae_dictionary(d, name, f.sae) for d, name, f in zip(sae_dirs, names, folders)]
    if neurons:
        dicts.append(_neuron_dictionary(lm.model, neurons, neuron_k))
    hookpoints = depth_order(lm.model, hookpoints)

    order = {"heldout-first": np.concatenate([rows_all.heldout_rows, rows_all.train_rows]),
             "heldout": rows_all.heldout_rows, "train": rows_all.train_rows}[split]
    n_rows = max(1, tokens // context)
    if n_rows > len(order):
        raise UserError(f"--tokens {tokens:,} needs {n_rows} rows of {context} but the corpus {corpus!r} has "
                        f"{len(order)} rows in split {split!r}; ask for at most {len(order) * context:,} tokens")
    row_ids = np.asarray(order[:n_rows], dtype=np.int64)
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows

    out.mkdir(parents=True, exist_ok=True)
    manifest = read_json(mpath) if mpath.exists() else None
    if manifest is None:
        toks = np.asarray(rows_all.tokens[row_ids], dtype=np.int32)
        save_npy(out / "tokens.npy", toks)
        save_npy(out / "row_ids.npy", row_ids)
        manifest = {"format_version": FORMAT_VERSION, "saelab_version": __version__, "identity": ident,
                    "request": request, "model_spec": model_spec, "model_name": lm.name, "corpus": corpus,
                    "data_fingerprint": rows_all.fingerprint, "heldout_fraction": prov.heldout_fraction,
                    "data_matches_training": data.matches_training, "context": context, "n_rows": n_rows,
                    "n_tokens": n_rows * context, "sink": asdict(sink), "hookpoints": hookpoints,
                    "chunk_rows": chunk_rows, "n_chunks": n_chunks, "chunks_done": 0, "complete": False,
                    "n_positions": 0, "wall_s": 0.0,
                    "dictionaries": {d.name: d.info(shard_size) for d in dicts}}
        for d in dicts:
            (out / "dicts" / dict_dirname(d.name)).mkdir(parents=True, exist_ok=True)
            if d.decoder is not None:
                write_tensors(out / "dicts" / dict_dirname(d.name) / "decoder.safetensors", {"W_dec": d.decoder})
        write_json(mpath, manifest)
    toks = read_npy(out / "tokens.npy", (n_rows, context))
    specials = special_ids(lm.tokenizer)
    excl_dir = out / "chunks" / "_excluded"
    excl_dir.mkdir(parents=True, exist_ok=True)
    for d in dicts:
        (out / "chunks" / dict_dirname(d.name)).mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    done = manifest["chunks_done"]
    bar = tqdm(total=n_rows * context, initial=min(n_rows, done * chunk_rows) * context, unit="tok",
               desc="caching", disable=not progress, unit_scale=True)
    for c in range(done, n_chunks):
        r0, r1 = c * chunk_rows, min(n_rows, (c + 1) * chunk_rows)
        recs = {d.name: ([], [], [], []) for d in dicts}
        excl_chunk = np.zeros((r1 - r0, context), dtype=bool)
        with torch.no_grad():
            for b0 in range(r0, r1, batch_rows):
                b1 = min(r1, b0 + batch_rows)
                ids = torch.from_numpy(np.asarray(toks[b0:b1], dtype=np.int64))  # [B, T]
                acts = collect_activations(lm.model, ids, hookpoints)
                excl = excluded_positions([acts[h] for h in hookpoints], ids, sink, specials)  # [B, T]
                excl_chunk[b0 - r0:b1 - r0] = excl.numpy()
                keep_pos = ~excl.reshape(-1)
                for d in dicts:
                    x = acts[d.hookpoint].reshape(-1, acts[d.hookpoint].shape[-1]).float()  # [B*T, d]
                    flat_row, lat, val = d.encode(x)
                    m = keep_pos[flat_row]
                    flat_row, lat, val = flat_row[m], lat[m], val[m]
                    r = recs[d.name]
                    r[0].append(b0 + flat_row // context)
                    r[1].append(flat_row % context)
                    r[2].append(lat)
                    r[3].append(val)
                bar.update((b1 - b0) * context)
        for d in dicts:
            rr, pp, ll, vv = (torch.cat(x) for x in recs[d.name])
            _write_chunk(out / "chunks" / dict_dirname(d.name) / f"chunk_{c:05d}.safetensors", rr, pp, ll, vv,
                         d.d_sae, shard_size)
        save_npy(excl_dir / f"chunk_{c:05d}.npy", excl_chunk)
        manifest["chunks_done"] = c + 1
        manifest["n_positions"] += int((~excl_chunk).sum())
        manifest["wall_s"] += time.time() - t0
        t0 = time.time()
        write_json(mpath, manifest)
    bar.close()

    # ---------------------------------------------------------------- finalise (idempotent)
    t0 = time.time()
    excl = np.concatenate([np.load(excl_dir / f"chunk_{c:05d}.npy") for c in range(n_chunks)])
    save_npy(out / "excluded.npy", excl)
    for d in dicts:
        _merge_chunks(out / "chunks" / dict_dirname(d.name), out / "dicts" / dict_dirname(d.name), n_chunks,
                      d.d_sae, shard_size)
    manifest["complete"] = True
    manifest["merge_wall_s"] = time.time() - t0
    manifest["tokens_per_s"] = manifest["n_tokens"] / max(1e-9, manifest["wall_s"])
    write_json(mpath, manifest)
    shutil.rmtree(out / "chunks", ignore_errors=True)
    if progress:
        print(f"saelab: cached {len(dicts)} dictionar{'y' if len(dicts) == 1 else 'ies'} over {manifest['n_tokens']:,} "
              f"tokens ({manifest['tokens_per_s']:.0f} tokens/s) in {out}")
    return out
