"""What `saelab attribute` (and `attribute_prompt` in the Python API) takes: one dataclass whose fields are
the command's options. `validate` runs every check that needs no model and no file, so a bad value fails
before anything loads; the checks that need the replacement or the tokenizer are in run.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError
from ..option_checks import check_device, check_dtype, check_types, need_at_least
from ..options import device_option, dtype_option, model_option, opt, out_option, overwrite_option, threads_option
from .neuronpedia import slugify

FEATURE_TARGET = re.compile(r"(\d+):(-?\d+):(\d+)")
MAX_TOKENS = 256
# Feature rows computed by default: the most influential 7,500 (circuit-tracer's CLI default, so the two tools do
# the same work), which keeps a 64-token prompt's edge rows near 1 GB however many features fire.
MAX_FEATURE_NODES = 7500


@dataclass(kw_only=True)
class AttributeConfig:
    """The options of `saelab attribute` (each field is its flag): the replacement folder, the prompt, the
    targets (top logits by default, a logit difference or a feature), the graph's size and pruning, and where
    it is written. `saelab.attribute(cfg)` runs it."""

    replacement: str = opt(help="replacement folder (a `saelab train --layers` run, or an import)", positional=True)
    prompt: str | None = opt(
        None, "the text to attribute (BOS is put first when the tokenizer has one); required unless --validate-prompts"
    )
    out: str = out_option("graph folder: graph.safetensors + graph.json + <slug>.json (the Neuronpedia JSON)")
    overwrite: bool = overwrite_option("an existing graph folder")
    # targets: at most one of the three; none: the top logits (--max-logits, --logit-prob)
    target: list[str] | None = opt(
        None, "attribute these next tokens (each one vocabulary token, e.g. ' b'; several: --target ' b' ' c')"
    )
    target_diff: list[str] | None = opt(
        None, "attribute the logit difference B minus A: --target-diff ' b' ' a' (one token each)", metavar="TOKEN"
    )
    target_feature: str | None = opt(
        None, "attribute one feature LAYER:POSITION:ID (position counts from 0; -1 = the last token)"
    )
    max_logits: int = opt(10, "top logits attributed when no target is given (at most)")
    logit_prob: float = opt(0.95, "... as many as cover this much of the next-token probability")
    max_feature_nodes: int = opt(
        MAX_FEATURE_NODES, "feature nodes computed, most influential first (0: every active feature)"
    )
    node_threshold: float = opt(0.8, "pruning: keep the nodes covering this fraction of the influence")
    edge_threshold: float = opt(0.98, "pruning: keep the edges covering this fraction of the influence")
    max_tokens: int = opt(
        MAX_TOKENS, "longest prompt in tokens: memory grows as features x (features + errors + tokens)"
    )
    zero_positions: int = opt(1, "leading positions with no feature nodes (the attention sink, as circuit-tracer)")
    batch_size: int = opt(256, "rows per batched backward pass")
    slug: str | None = opt(None, "the graph's name in the JSON and its file name", shown="the --out folder's name")
    model: str | None = model_option(None, shown="the one the replacement was trained on")
    threads: int | None = threads_option()
    device: str = device_option()
    dtype: str = dtype_option()
    # check the graphs against ablations instead of attributing --prompt (circuits/validate.py)
    validate_prompts: int = opt(
        0,
        "validate the graphs of N built-in corpus prompts against ablations (validation.json + validation.png "
        "in --out) instead of attributing --prompt",
        metavar="N",
    )
    validate_features: int = opt(10, "with --validate-prompts: the top-influence features ablated per prompt")

    def validate(self) -> None:
        """Every check that needs no model, no tokenizer and no file."""
        check_types(self)
        need_at_least(self, 0, "validate_prompts")
        need_at_least(self, 1, "validate_features")
        if self.validate_prompts and self.prompt:
            raise UserError("give --prompt (one graph) or --validate-prompts N (corpus prompts), not both")
        if not self.validate_prompts and (not self.prompt or not self.prompt.strip()):
            raise UserError("--prompt is empty: give the text to attribute")
        given = [n for n in ("target", "target_diff", "target_feature") if getattr(self, n)]
        if len(given) > 1:
            raise UserError("give one kind of target: --target, --target-diff or --target-feature, not several")
        if self.target_diff is not None and len(self.target_diff) != 2:
            raise UserError(f"--target-diff takes two tokens, B and A (B minus A), not {len(self.target_diff)}")
        if self.target_feature is not None and not FEATURE_TARGET.fullmatch(self.target_feature.strip()):
            raise UserError(f"--target-feature {self.target_feature!r}: expected LAYER:POSITION:ID, e.g. 3:-1:1207")
        if self.slug is not None and slugify(self.slug) != self.slug:
            raise UserError(
                f"--slug {self.slug!r}: use lower-case letters, digits, - and _ (e.g. {slugify(self.slug)!r})"
            )
        need_at_least(self, 1, "max_logits", "max_tokens", "batch_size", "threads")
        need_at_least(self, 0, "zero_positions", "max_feature_nodes")
        if not 0.0 < self.logit_prob <= 1.0:
            raise UserError(f"--logit-prob must be in (0, 1], not {self.logit_prob}")
        for name in ("node_threshold", "edge_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1 (a fraction), not {v}")
        check_device(self.device)
        check_dtype(self.dtype, self.device)

    def feature_target(self) -> tuple[int, int, int] | None:
        """--target-feature as (layer, position, id); the position may count from the end (-1)."""
        if self.target_feature is None:
            return None
        layer, pos, fid = FEATURE_TARGET.fullmatch(self.target_feature.strip()).groups()
        return int(layer), int(pos), int(fid)
