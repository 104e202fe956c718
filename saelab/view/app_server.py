"""`saelab serve` as a function: `serve_folders(ServeConfig)` opens the SAE folders (each model once),
their latent caches (given, or built over `tokens` held-out tokens) and explanations as feature stores,
then runs the web app (web_app.py) until stopped."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..option_checks import check_types, need_at_least
from ..options import dtype_option, opt, threads_option
from ..sae.folder import open_sae
from ..sae.replacement import open_replacement
from .feature_store import FeatureStore

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """`saelab serve SAE...`: the folders, one cache / explanations per SAE (or one for all), where to listen."""

    sae: list[str] = opt(help="SAE folders", positional=True)
    cache: list[str] | None = opt(None, "latent caches (one per SAE, or one holding them all)")
    tokens: int = opt(16384, "held-out tokens to cache when there is no --cache")
    explanations: list[str] | None = opt(
        None, "interpretation run folder or JSONL file, one per SAE", shown="SAE/explanations.jsonl if present"
    )
    graphs: str | None = opt(None, "folder of attribution-graph JSON files (circuit-tracer / Neuronpedia) for /graphs")
    replacement: str | None = opt(
        None, "replacement folder: compute graphs and run interventions from the graph pages (with --graphs)"
    )
    host: str = opt("127.0.0.1", "bind address (127.0.0.1: loopback only)")
    port: int = opt(8765, "port")
    dtype: str = dtype_option()
    threads: int | None = threads_option()

    def validate(self) -> None:
        check_types(self)
        need_at_least(self, 1, "threads", "tokens")
        if not 0 < self.port < 65536:
            raise UserError("--port must be in 1..65535")
        if self.graphs and not Path(self.graphs).is_dir():
            raise UserError(f"--graphs {self.graphs}: not a folder")
        if self.replacement and not self.graphs:
            raise UserError("--replacement is for the graph pages: give --graphs DIR too")
        _per_sae(self.cache, len(self.sae), "--cache")
        _per_sae(self.explanations, len(self.sae), "--explanations")


def _per_sae(values, n: int, what: str) -> list:
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise UserError(f"give one {what} or one per SAE ({n}), not {len(values)}")
    return values


def open_stores(cfg: ServeConfig) -> list[FeatureStore]:
    """One feature store per folder, named by the folder (made unique); each model loads once."""
    cfg.validate()
    caches = _per_sae(cfg.cache, len(cfg.sae), "--cache")
    expls = _per_sae(cfg.explanations, len(cfg.sae), "--explanations")
    folders = [open_sae(Path(d)) for d in cfg.sae]  # bad folders fail before any model loads
    models: dict[str, object] = {}
    stores, names = [], set()
    for d, c, e, folder in zip(cfg.sae, caches, expls, folders):
        spec = folder.provenance.model_spec
        if spec not in models:
            models[spec] = folder.open_model(dtype=cfg.dtype)
        lm = models[spec]
        name = Path(d).name
        while name in names:
            name += "_"
        names.add(name)
        stores.append(
            FeatureStore.build(
                d, cache=c, tokens=cfg.tokens, explanations=e, model=lm.model, tokenizer=lm.tokenizer, name=name
            )
        )
    return stores


def check_port(host: str, port: int) -> None:
    """Refuse a port another program listens on before any folder or model loads (uvicorn would find out
    only after the loading). SO_REUSEADDR as uvicorn sets it, so a port left in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use (another server?); choose another --port") from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_folders(cfg: ServeConfig) -> None:
    """Open the stores and serve them (needs the web extras: fastapi, uvicorn)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("`saelab serve` needs the web extras: pip install 'saelab[view]' (fastapi, uvicorn)") from None
    from .web_app import serve

    cfg.validate()
    check_port(cfg.host, cfg.port)  # before anything loads
    rep = open_replacement(Path(cfg.replacement)) if cfg.replacement else None  # a bad folder fails first
    stores = open_stores(cfg)
    graph_opts = {}
    if cfg.graphs:
        lm = rep.folders[0].open_model(dtype=cfg.dtype) if rep else None  # beside the served SAEs' models
        graph_opts = {"graphs": Path(cfg.graphs), "replacement": rep, "lm": lm}
    if cfg.host not in LOOPBACK:
        print(f"saelab: warning: serving on {cfg.host}, reachable from other machines; there is no authentication")
    print(f"saelab: serving {len(stores)} SAE(s) on http://{cfg.host}:{cfg.port}/")
    if cfg.graphs:
        print(f"saelab: attribution graphs of {cfg.graphs} on http://{cfg.host}:{cfg.port}/graphs")
    serve(stores, cfg.host, cfg.port, **graph_opts)
