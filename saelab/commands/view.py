"""Commands `steer`, `dashboard`, `serve`: see, search and steer the features of an SAE."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..options import DTYPE_HELP, DTYPES, THREADS_HELP
from . import LATENTS_HELP, OldSpelling, latent_list

STEER_HELP = """Generate from a prompt with features clamped or added, next to the unsteered model (same seed).
Examples:
  saelab steer RUN/SAE --prompt "I went to the" --clamp 1234=8x        (8 x the feature's max activation)
  saelab steer RUN/SAE --prompt "Hello" --add 77=20 --clamp 5=0          (add 20 to 77; switch 5 off)
  saelab steer --model embedded --hookpoint model.layers.6 --prompt "I think" \\
      --positive "I love this" "What a joy" --negative "I hate this" "What a pain" --scale 4
"""


def register(sub) -> None:
    p = sub.add_parser("steer", help="generate with features clamped/added (steered vs unsteered, same seed)",
                       description=STEER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae", nargs="?", help="SAE folder (leave out for a contrastive direction with --hookpoint; default: none)")
    p.add_argument("--prompt", nargs="+", required=True, help="one or more prompts (required)")
    p.add_argument("--clamp", nargs="+", default=[], metavar="LATENT=V", help="set latent to V (or Vx = V x max activation; default: none)")
    p.add_argument("--add", nargs="+", default=[], metavar="LATENT=V", help="add V (or V x max) to the latent = V x its decoder direction (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate per prompt (default 40)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy (default 0)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens, 0 = all (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for steered and unsteered (default 0)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template (default: off)")
    p.add_argument("--cache", help="latent cache with the features' max activations, for Vx values (default: build one over --tokens)")
    p.add_argument("--tokens", "--stats-tokens", dest="tokens", type=int, default=16384, action=OldSpelling,
                   help="held-out tokens to cache for max activations when there is no --cache, as in dashboard/serve "
                        "(--stats-tokens: the old spelling) (default 16384)")
    p.add_argument("--model", help="model (default: the SAE's own, else embedded)")
    p.add_argument("--hookpoint", help="contrastive baseline: where to add the direction (default: the SAE's site)")
    p.add_argument("--positive", nargs="+", help="contrastive baseline: prompts of the concept (default: none)")
    p.add_argument("--negative", nargs="+", help="contrastive baseline: prompts without it (default: none)")
    p.add_argument("--scale", type=float, default=4.0, help="contrastive baseline: multiplier of the direction (default 4)")
    p.add_argument("--strengths", nargs="+", type=float, default=[1.0], metavar="X",
                   help="multiply every edit value (or --scale) by each X: one steered text per X, same seed (default 1)")
    p.add_argument("--sweep", action="store_true", help="same as --strengths 0.5 1 2 4 (default: off)")
    p.add_argument("--json", help="also write the outputs to this JSON file (default: none)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.set_defaults(fn=run_steer)

    d = sub.add_parser("dashboard", help="static HTML dashboards (one page per feature + index)")
    d.add_argument("sae", help="SAE folder")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--cache", help="latent cache from `saelab cache` (default: build one over --tokens)")
    d.add_argument("--tokens", type=int, default=16384, help="held-out tokens to cache when there is no --cache")
    d.add_argument("--explanations", help="interpretation run folder (`saelab explain --out`, with its scores) or a JSONL "
                                          "file of {latent, explanation} (default: SAE/explanations.jsonl if present)")
    d.add_argument("--latents", nargs="+", help=LATENTS_HELP + " (default: all)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing dashboard in --out")
    d.add_argument("--threads", type=int, help=THREADS_HELP)
    d.set_defaults(fn=run_dashboard)

    s = sub.add_parser("serve", help="local web app: search, feature pages, fire-on-text, steering")
    s.add_argument("sae", nargs="+", help="SAE folders")
    s.add_argument("--cache", nargs="+", help="latent caches (one per SAE, or one holding them all)")
    s.add_argument("--tokens", type=int, default=16384, help="held-out tokens to cache when there is no --cache")
    s.add_argument("--explanations", nargs="+", help="interpretation run folder or JSONL file, one per SAE (default: "
                                                     "SAE/explanations.jsonl if present)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    s.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)
    s.add_argument("--threads", type=int, help=THREADS_HELP)
    s.set_defaults(fn=run_serve)


def _per_sae(values, n: int, what: str) -> list:
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise UserError(f"give one {what} or one per SAE ({n}), not {len(values)}")
    return values


def run_steer(args) -> None:
    import torch

    from ..models import load_model
    from ..sae.folder import check_fits, open_sae
    from ..features.steer import parse_edit
    from ..features.steering import SWEEP, SteeringRequest, run_steering, sink_positions

    req = SteeringRequest(strengths=list(SWEEP) if args.sweep else args.strengths,
                          prompts=args.prompt, edits=[parse_edit(e, "clamp") for e in args.clamp]
                          + [parse_edit(e, "add") for e in args.add], positive=args.positive or [],
                          negative=args.negative or [], hookpoint=args.hookpoint, scale=args.scale,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          seed=args.seed, chat=args.chat)
    req.check()
    if args.json and Path(args.json).exists():
        raise UserError(f"{args.json} exists; choose another --json")
    folder = open_sae(Path(args.sae)) if args.sae else None
    sae, cfg_json = (folder.sae, folder.cfg) if folder else (None, None)
    req.check_sae(sae)
    model_spec = args.model or (folder.provenance.model_spec if folder else "embedded")
    max_acts = lm = None
    if req.needs_max_acts:
        from ..view.feature_store import ensure_cache

        if args.cache is None and not args.model:  # the cache is built with the SAE's own model: load it once
            lm = folder.open_model(dtype=args.dtype)
        lc, name = ensure_cache(Path(args.sae), sae.cfg.d_sae, args.cache, args.tokens, loaded_model=lm)
        max_acts = torch.from_numpy(lc.max_activation(name).copy())
    if lm is None:
        lm = folder.open_model(model=args.model, dtype=args.dtype) if folder else load_model(model_spec, dtype=args.dtype)
    if folder:
        check_fits([folder], lm.model)  # a 512-wide SAE on a 576-wide site (another --model): a clear error

    def show(what: str, r: dict) -> None:
        print(f"\nprompt: {r['prompt']!r}\n--- unsteered ---\n{r['unsteered']}")
        for v in r["sweep"]:
            flag = f"   [degenerate: {v['degenerate']}]" if v["degenerate"] else ""
            print(f"--- steered x{v['strength']:g} ({v['steering']}){flag} ---\n{v['text']}")

    res = run_steering(req, lm.model, lm.tokenizer, sae, max_acts, sink_positions(cfg_json), on_result=show)
    if args.json:
        from ..storage import write_json

        write_json(Path(args.json), {"sae": args.sae, "model": model_spec, "steering": res.steering, "seed": args.seed,
                                     "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                                     "results": res.results})


def run_dashboard(args) -> None:
    from ..view.feature_store import FeatureStore
    from ..view.static_site import check_out, write_dashboard
    from ..sae.folder import open_sae

    out = Path(args.out)
    check_out(out, args.overwrite)
    sae = open_sae(Path(args.sae)).sae
    latents = latent_list(args.latents, sae.cfg.d_sae)  # bad --latents fail before any model work
    store = FeatureStore.build(args.sae, cache=args.cache, tokens=args.tokens, explanations=args.explanations)
    write_dashboard(store, out, latents, overwrite=args.overwrite)
    print(f"saelab: wrote {len(latents or range(sae.cfg.d_sae))} feature pages; open {out / 'index.html'}")


def run_serve(args) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("`saelab serve` needs the web extras: pip install 'saelab[view]' (fastapi, uvicorn)") from None
    from ..view.web_app import serve
    from ..view.feature_store import FeatureStore
    from ..sae.folder import open_sae

    if not 0 < args.port < 65536:
        raise UserError("--port must be in 1..65535")
    caches = _per_sae(args.cache, len(args.sae), "--cache")
    expls = _per_sae(args.explanations, len(args.sae), "--explanations")
    folders = [open_sae(Path(d)) for d in args.sae]  # bad folders fail before any model loads
    models: dict[str, object] = {}
    stores, names = [], set()
    for d, c, e, folder in zip(args.sae, caches, expls, folders):
        spec = folder.provenance.model_spec
        if spec not in models:
            models[spec] = folder.open_model(dtype=args.dtype)
        lm = models[spec]
        name = Path(d).name
        while name in names:
            name += "_"
        names.add(name)
        stores.append(FeatureStore.build(d, cache=c, tokens=args.tokens, explanations=e, model=lm.model,
                                         tokenizer=lm.tokenizer, name=name))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"saelab: warning: serving on {args.host}, reachable from other machines; there is no authentication")
    print(f"saelab: serving {len(stores)} SAE(s) on http://{args.host}:{args.port}/")
    serve(stores, args.host, args.port)
