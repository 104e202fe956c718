"""Commands `steer`, `dashboard`, `serve`: see, search and steer the features of an SAE."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

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
    p.add_argument("sae", nargs="?", help="SAE folder (leave out for a contrastive direction with --hookpoint)")
    p.add_argument("--prompt", nargs="+", required=True, help="one or more prompts")
    p.add_argument("--clamp", nargs="+", default=[], metavar="LATENT=V", help="set latent to V (or Vx = V x max activation)")
    p.add_argument("--add", nargs="+", default=[], metavar="LATENT=V", help="add V (or V x max) to the latent = V x its decoder direction")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--cache", help="latent cache with the features' max activations (for Vx values)")
    p.add_argument("--stats-tokens", type=int, default=16384, help="tokens for max activations when there is no --cache")
    p.add_argument("--model", help="model (default: the SAE's own)")
    p.add_argument("--hookpoint", help="contrastive baseline: where to add the direction")
    p.add_argument("--positive", nargs="+", help="contrastive baseline: prompts of the concept")
    p.add_argument("--negative", nargs="+", help="contrastive baseline: prompts without it")
    p.add_argument("--scale", type=float, default=4.0, help="contrastive baseline: multiplier of the direction")
    p.add_argument("--json", help="also write the outputs to this JSON file")
    p.add_argument("--threads", type=int)
    p.set_defaults(fn=run_steer)

    d = sub.add_parser("dashboard", help="static HTML dashboards (one page per feature + index)")
    d.add_argument("sae", help="SAE folder")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--cache", help="latent cache from `saelab cache` (default: build one over --tokens)")
    d.add_argument("--tokens", type=int, default=16384, help="held-out tokens to cache when there is no --cache")
    d.add_argument("--explanations", help="interpretation records (JSONL file or folder)")
    d.add_argument("--latents", help="which features, e.g. 0-99,120 (default: all)")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--threads", type=int)
    d.set_defaults(fn=run_dashboard)

    s = sub.add_parser("serve", help="local web app: search, feature pages, fire-on-text, steering")
    s.add_argument("sae", nargs="+", help="SAE folders")
    s.add_argument("--cache", nargs="+", help="latent caches (one per SAE, or one holding them all)")
    s.add_argument("--tokens", type=int, default=16384, help="held-out tokens to cache when there is no --cache")
    s.add_argument("--explanations", nargs="+", help="interpretation records per SAE (JSONL file or folder)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--threads", type=int)
    s.set_defaults(fn=run_serve)


def _threads(n):
    if n:
        import torch

        torch.set_num_threads(n)


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

    from ..models import load_model, resolve_hookpoints
    from ..sae.folder import load_sae
    from ..features.steer import FeatureSteer, check_edits, contrastive_direction, direction_steer, parse_edit, steer_compare

    _threads(args.threads)
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be positive")
    if args.json and Path(args.json).exists():
        raise UserError(f"{args.json} exists; choose another --json")
    edits = [parse_edit(e, "clamp") for e in args.clamp] + [parse_edit(e, "add") for e in args.add]
    contrastive = bool(args.positive or args.negative)
    if contrastive and edits:
        raise UserError("steer either by SAE features (--clamp/--add) or by a contrastive direction (--positive/--negative), not both")
    if not contrastive and not edits:
        raise UserError("nothing to steer: give --clamp/--add edits, or --positive and --negative prompts")
    sae = cfg_json = None
    if args.sae:
        sae, cfg_json = load_sae(Path(args.sae))
        check_edits(edits, sae.cfg.d_sae)
    elif not contrastive:
        raise UserError("feature edits need an SAE folder")
    if contrastive and not (args.hookpoint or sae):
        raise UserError("a contrastive direction needs --hookpoint (or an SAE folder, whose site is used)")
    model_spec = args.model or (cfg_json["saelab"].get("model_spec", "embedded") if cfg_json else "embedded")
    max_acts = None
    if any(e.relative for e in edits):
        from ..view.feature_store import ensure_cache

        lc, name = ensure_cache(Path(args.sae), sae.cfg.d_sae, args.cache, args.stats_tokens)
        max_acts = torch.from_numpy(lc.max_activation(name).copy())
    lm = load_model(model_spec)
    skip = int((cfg_json or {}).get("saelab", {}).get("sink", {}).get("first_positions", 1))
    if contrastive:
        hp = args.hookpoint or sae.cfg.out_hookpoint or sae.cfg.hookpoint
        resolve_hookpoints(lm.model, [hp])
        direction = contrastive_direction(lm.model, lm.tokenizer, hp, args.positive or [], args.negative or [], skip)
        steer, what = direction_steer(hp, direction, args.scale, skip), \
            f"contrastive direction at {hp} (norm {float(direction.norm()):.2f}) x {args.scale}"
        sae_for_ctx = None
    else:
        steer = FeatureSteer(edits, max_acts, skip)
        what = ", ".join(f"{e.op} {e.latent} {'+' if e.op == 'add' else '->'} {v:.3g}" + (f" ({e.value}x max)" if e.relative else "")
                         for e, (_, _, v) in zip(edits, steer.edits))
        sae_for_ctx = sae
    results = []
    for prompt in args.prompt:
        r = steer_compare(lm.model, lm.tokenizer, sae_for_ctx, prompt, steer, args.max_new_tokens,
                          args.temperature, args.top_k, args.seed, chat=args.chat)
        results.append({"prompt": prompt, **r})
        print(f"\nprompt: {prompt!r}\n--- unsteered ---\n{r['unsteered']}\n--- steered ({what}) ---\n{r['steered']}")
    if args.json:
        from ..storage import write_json

        write_json(Path(args.json), {"sae": args.sae, "model": model_spec, "steering": what, "seed": args.seed,
                                     "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                                     "results": results})


def run_dashboard(args) -> None:
    from ..view.feature_store import FeatureStore
    from ..view.static_site import parse_latents, write_dashboard
    from ..sae.folder import load_sae

    _threads(args.threads)
    out = Path(args.out)
    if (out / "index.html").exists() and not args.overwrite:
        raise UserError(f"{out} already holds a dashboard; pass --overwrite to replace it")
    sae, _ = load_sae(Path(args.sae))
    latents = parse_latents(args.latents, sae.cfg.d_sae)  # bad --latents fail before any model work
    store = FeatureStore.build(args.sae, cache=args.cache, tokens=args.tokens, explanations=args.explanations)
    write_dashboard(store, out, latents, overwrite=args.overwrite)
    print(f"saelab: wrote {len(latents)} feature pages; open {out / 'index.html'}")


def run_serve(args) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("`saelab serve` needs the web extras: pip install 'saelab[view]' (fastapi, uvicorn)") from None
    from ..view.web_app import serve
    from ..view.feature_store import FeatureStore
    from ..models import load_model
    from ..sae.folder import load_sae

    _threads(args.threads)
    if not 0 < args.port < 65536:
        raise UserError("--port must be in 1..65535")
    caches = _per_sae(args.cache, len(args.sae), "--cache")
    expls = _per_sae(args.explanations, len(args.sae), "--explanations")
    cfgs = [load_sae(Path(d))[1] for d in args.sae]  # bad folders fail before any model loads
    models: dict[str, object] = {}
    stores, names = [], set()
    for d, c, e, cfg in zip(args.sae, caches, expls, cfgs):
        spec = cfg["saelab"].get("model_spec", "embedded")
        if spec not in models:
            models[spec] = load_model(spec)
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
