"""How a KL+MSE fine-tune spends its budget: tokens per optimiser step, chosen from --tokens.

A fine-tune is short (5% of the baseline's tokens in Karvonen 2025), so at the local default of 4,096
tokens per step it took few steps: 13k fine-tune tokens of a 262k-token layer-6 TopK SAE were 3 steps.
What moves a fine-tuned dictionary is the number of steps (a fresh Adam state moves each weight by about
lr per step), so when --batch-tokens is not given a kl+mse run takes about FINETUNE_STEPS steps:
--tokens / FINETUNE_STEPS in whole --context rows, between one row and the local default. Measured on
that SAE with `saelab eval` (16k held-out tokens, sinks clean): CE increase -8.4% at 3 steps (the old
default), -11.4% at 12, -14.1% at 51 (this default). A budget that gives fewer than MIN_FINETUNE_STEPS
steps even at one row per step is refused before anything loads; a --batch-tokens that leaves fewer steps
gets a note. Both baseline budgets (262k and 1M tokens): docs/E2E.md, bench/finetune_numbers.sh.
"""

from __future__ import annotations

import sys

from ..errors import UserError

LOCAL_BATCH_TOKENS = 4096  # --batch-tokens when not given, for every loss but kl+mse
FINETUNE_STEPS = 48  # the measured fine-tune of the 1M-token baseline: 49k tokens at 1,024 per step
MIN_FINETUNE_STEPS = 12  # the fewest steps a budget may give at one row per step (3,072 tokens at --context 256)


def default_batch_tokens(loss: str, tokens: int, context: int) -> int:
    """--batch-tokens when it is not given: the local default, or a kl+mse fine-tune's share of its budget."""
    if loss != "kl+mse":
        return LOCAL_BATCH_TOKENS
    rows = max(1, min(tokens // (FINETUNE_STEPS * context), LOCAL_BATCH_TOKENS // context))
    return rows * context


def check_finetune_budget(tokens: int, batch_tokens: int, context: int, given: bool) -> None:
    """A kl+mse budget that gives fewer than MIN_FINETUNE_STEPS steps even at one row per step is refused,
    saying what would do; a given --batch-tokens that leaves fewer steps gets a note (it is a choice)."""
    steps = tokens // batch_tokens
    if steps >= MIN_FINETUNE_STEPS:
        return
    if given and tokens >= MIN_FINETUNE_STEPS * context:
        print(
            f"saelab: note: --loss kl+mse: --batch-tokens {batch_tokens:,} gives {steps} optimiser step(s); "
            f"without it the run would take {tokens // default_batch_tokens('kl+mse', tokens, context)} "
            f"(measured: more steps cut KL and CE more, docs/E2E.md)",
            file=sys.stderr,
        )
        return
    raise UserError(
        f"--loss kl+mse: --tokens {tokens:,} at {batch_tokens:,} tokens per step is {steps} optimiser step(s); "
        f"a fine-tune needs at least {MIN_FINETUNE_STEPS} to move the dictionary: raise --tokens to at least "
        f"{MIN_FINETUNE_STEPS * context:,} ({MIN_FINETUNE_STEPS} steps of one --context {context} row; docs/E2E.md)"
    )
