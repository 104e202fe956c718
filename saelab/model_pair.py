"""Model diffing (`--model A --model-b B`): two models seen as one module, so a crosscoder reads the
same hookpoint in both through the ordinary machinery (activation stream, widths, eval).

`ModelPair` registers A's submodules under their own names and B under `model_b.`, so
`model.layers.6` is A's block and `model_b.model.layers.6` is B's: hook lookups (`module_at`,
`resolve_hookpoints`, `hookpoint_widths`) need no change, and a crosscoder's joined hookpoint
(`model.layers.6+model_b.model.layers.6`) is a folder name like any other. Its forward runs A then B
on the same token ids, so every batch gives both models' activations for the same rows (and one
sink/outlier mask over both keeps them aligned). The forward stops once every hooked site fired, so
A runs every block (not its LM head: a site in the head is not supported) and B up to its deepest site.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import UserError
from .models import EMBEDDED, EMBEDDED_NAME, LoadedModel, load_model
from .storage import cache_dir

B = "model_b"
B_PREFIX = B + "."
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def is_b_site(hookpoint: str) -> bool:
    return hookpoint.startswith(B_PREFIX)


class ModelPair(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        for name, child in a.named_children():
            if name == B:
                raise UserError(f"model A has a submodule named {B!r}; it cannot be diffed (the name marks model B)")
            self.add_module(name, child)
        self.add_module(B, b)
        object.__setattr__(self, "model_a", a)  # not registered: A's modules keep their own names
        self.config = a.config  # decoder_layers / vocab size: model A's

    def forward(self, **kwargs):
        """Recording only (splices run each model alone, `parts`): A's body without its LM head (no
        logits are read, and the head can cost more than the blocks), then B's, stopped by the hooks."""
        self.model_a.base_model(**kwargs)
        self.model_b.base_model(**kwargs)

    def parts(self, names: list[str]) -> list[tuple[str, nn.Module, list[str]]]:
        """(tag, model, its sites among `names`) for A and for B: what splicing into each model alone needs."""
        return [
            ("model_a", self.model_a, [h for h in names if not is_b_site(h)]),
            ("model_b", self.model_b, [h for h in names if is_b_site(h)]),
        ]


def with_b_sites(sites: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """A's sites, then the same sites in B (the crosscoder's input order)."""
    return list(sites) + [(B_PREFIX + a, None) for a, _ in sites]


def check_b_widths(sites: list[tuple[str, str | None]], widths: dict[str, int], spec_a: str, spec_b: str) -> None:
    bad = [
        f"{a}: {widths[a]} in A, {widths[B_PREFIX + a]} in B"
        for a, _ in sites
        if not is_b_site(a) and widths[a] != widths[B_PREFIX + a]
    ]
    if bad:
        raise UserError(
            f"--model-b: the site widths differ between --model {spec_a} and --model-b {spec_b} "
            f"({'; '.join(bad)}); a crosscoder needs the same width at every site: diff models "
            f"of one shape, or pick hookpoints of equal width"
        )


def vocab_differs(tok_a, tok_b) -> str | None:
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va == vb:
        return None
    diff = sorted(set(va.items()) ^ set(vb.items()), key=str)[:3]
    return f"{len(va)} vs {len(vb)} tokens; e.g. {', '.join(f'{t!r}->{i}' for t, i in diff)} is in one only"


def tokenizer_folder(spec: str) -> Path | None:
    """Where a model on disk keeps its tokenizer (a folder, or the embedded model once dequantised)."""
    folder = cache_dir() / "models" / EMBEDDED_NAME if spec == EMBEDDED else Path(spec)
    if spec.endswith(".gguf") or not any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None
    return folder


def _same_files(a: Path | None, b: Path | None) -> bool:
    """Byte-identical tokenizer files: the same tokenizer without loading either."""
    return bool(a and b) and all(
        (a / f).exists() == (b / f).exists() and (not (a / f).exists() or (a / f).read_bytes() == (b / f).read_bytes())
        for f in _TOKENIZER_FILES
    )


def local_tokenizer(folder: Path | None):
    if folder is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - the check after loading still runs
        return None


def check_same_tokenizer(spec_a: str, spec_b: str, tok_a=None, tok_b=None) -> None:
    """Both models must read the same token ids: the crosscoder sees one token row through both.
    Before loading: the tokenizers of local models (skipped when either is not on disk)."""
    if tok_a is None and _same_files(tokenizer_folder(spec_a), tokenizer_folder(spec_b)):
        return
    tok_a = tok_a if tok_a is not None else local_tokenizer(tokenizer_folder(spec_a))
    tok_b = tok_b if tok_b is not None else local_tokenizer(tokenizer_folder(spec_b))
    if tok_a is None or tok_b is None:
        return
    why = vocab_differs(tok_a, tok_b)
    if why:
        raise UserError(
            f"--model {spec_a} and --model-b {spec_b} have different tokenizers ({why}); model diffing "
            f"feeds both the same token rows, so they must share a vocabulary"
        )


def load_pair(spec_a: str, spec_b: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Both models as one `ModelPair` (A's tokenizer and name), refused if their vocabularies differ."""
    a = load_model(spec_a, device=device, dtype=dtype)
    b = load_model(spec_b, device=device, dtype=dtype)
    check_same_tokenizer(spec_a, spec_b, a.tokenizer, b.tokenizer)
    return LoadedModel(ModelPair(a.model, b.model), a.tokenizer, a.name)
