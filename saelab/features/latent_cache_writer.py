"""Build a latent cache (the format and the reader are in latent_cache.py): run the model once over
N tokens and record every nonzero activation of each dictionary, chunk by chunk, resumably.

`write_latent_cache(LatentCacheConfig)` reads as its steps: check the inputs (`_plan`, no model) ->
open the output folder (refuse / replace / resume, out_folder.py) -> open the run (model, dictionaries
(latent_dictionaries.py), rows, manifest) -> collect chunk by chunk -> merge into shards (both
latent_cache_merge.py) -> summarise."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models import LoadedModel
from ..out_folder import LATENT_CACHE, open_out
from ..sae.folder import Provenance, open_sae, open_shared_data, shared_provenance, unique_names
from ..sae.replacement import is_replacement, open_replacement
from ..sinks import SinkConfig
from ..storage import fingerprint, read_json, write_json, write_tensors
from .cache_config import LatentCacheConfig
from .latent_cache import DECODER_NORMS, FORMAT_VERSION, MANIFEST, check_files, dict_dirname, save_npy
from .latent_cache_merge import CacheRun, collect, finalise
from .latent_dictionaries import Dictionary, neuron_dictionary, refuse_crosscoder, sae_dictionary


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


def _plan(cfg: LatentCacheConfig, sink: SinkConfig | None) -> _Plan:
    """Check the inputs (SAE folders, the data they agree on) and name the cache by its request."""
    sae_dirs, folders = dictionary_folders(cfg.sae_dirs)  # bad folders fail here, before the model loads
    for d, f in zip(sae_dirs, folders):
        refuse_crosscoder(d, f.sae)
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


def dictionary_folders(dirs: list[str]) -> tuple[list[Path], list]:
    """(paths, opened SaeFolders) of the dictionaries to cache: an SAE folder is one; a replacement folder
    (sae/replacement.py, opened and checked by `open_replacement`) gives each of its dictionaries (one per
    layer of a PLT set, or its one CLT)."""
    paths, folders = [], []
    for d in dirs:
        if is_replacement(d):
            rep = open_replacement(d)
            paths += [Path(f.path) for f in rep.folders]
            folders += rep.folders
        else:
            paths.append(Path(d))
            folders.append(open_sae(Path(d)))
    return paths, folders


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
    plan: _Plan, data, dicts: list[Dictionary], hookpoints: list[str], n_rows: int, cfg: LatentCacheConfig
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


def _open_run(cfg: LatentCacheConfig, plan: _Plan, folder, loaded_model: LoadedModel | None) -> CacheRun:
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
    dicts = [sae_dictionary(d, name, f.sae) for d, name, f in zip(plan.sae_dirs, plan.names, plan.folders)]
    if cfg.neurons:
        resolve_hookpoints(lm.model, [cfg.neurons])
        dicts.append(neuron_dictionary(lm.model, cfg.neurons, cfg.neuron_k))
    # every site of every dictionary (a CLT: each layer's MLP input), collected in one forward
    hookpoints = resolve_hookpoints(lm.model, [h for d in dicts for h in d.sites])
    hookpoints = depth_order(lm.model, hookpoints)
    context = plan.prov.context
    row_ids = _select_rows(cfg, data.rows, context, plan.prov.corpus)
    out = folder.prepare()  # --overwrite: the old cache's files go now, not before the checks above
    mpath = out / MANIFEST
    manifest = read_json(mpath) if mpath.exists() else None
    if manifest is None:  # written first: a run stopped below (a full disk) is this cache, resumed by a rerun
        manifest = _new_manifest(plan, data, dicts, hookpoints, len(row_ids), cfg)
        write_json(mpath, manifest)
    _write_inputs(out, data.rows.tokens, row_ids, dicts)
    return CacheRun(cfg, out, lm, dicts, hookpoints, plan.sink, context, len(row_ids), manifest)


def _write_inputs(out: Path, tokens, row_ids: np.ndarray, dicts: list[Dictionary]) -> None:
    """The cached rows and the dictionaries' decoders, each unless a stopped run already wrote it
    (every file is written atomically: one that exists is whole)."""
    files = {"tokens.npy": lambda p: save_npy(p, np.asarray(tokens[row_ids], dtype=np.int32))}
    files["row_ids.npy"] = lambda p: save_npy(p, row_ids)
    for d in dicts:
        sub = Path("dicts") / dict_dirname(d.name)
        (out / sub).mkdir(parents=True, exist_ok=True)
        if d.decoder is not None:
            files[str(sub / "decoder.safetensors")] = lambda p, d=d: write_tensors(p, {"W_dec": d.decoder})
        if d.decoder_norms is not None:
            files[str(sub / DECODER_NORMS)] = lambda p, d=d: write_tensors(p, {"norms": d.decoder_norms})
    for name, write in files.items():
        if not (out / name).exists():
            write(out / name)


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
    folder = open_out(
        cfg.out, LATENT_CACHE, cfg.overwrite, plan.identity, inputs=plan.sae_dirs, need_bytes=_size(cfg, plan)
    )
    if folder.resume and _already_complete(folder.path, progress):
        return folder.path
    run = _open_run(cfg, plan, folder, loaded_model)
    collect(run, progress)
    finalise(run)
    folder.done()
    if progress:
        n = len(run.dicts)
        print(
            f"saelab: cached {n} dictionar{'y' if n == 1 else 'ies'} over {run.manifest['n_tokens']:,} "
            f"tokens ({run.manifest['tokens_per_s']:.0f} tokens/s) in {run.out}"
        )
    return run.out


def _size(cfg: LatentCacheConfig, plan: _Plan) -> int:
    """A lower bound of the cache's size: the tokens (int32 + the excluded mask) and, for a dictionary of
    known k (TopK), k entries a token (an int32 position and a float32 value each)."""
    ks = [getattr(getattr(f.sae, "cfg", None), "k", 0) for f in plan.folders]
    return cfg.tokens * (5 + 8 * sum(k for k in ks if isinstance(k, int)))
