"""How a KL+MSE fine-tune spends its budget: tokens per optimiser step, chosen from --tokens.

A fine-tune is short (5% of the baseline's tokens in Karvonen 2025), so at the local default of 4,096
tokens per step it takes few steps: on a 262k-token layer-6 TopK SAE, 13k fine-tune tokens at 4,096
per step were 3 steps and cut the CE increase by 1%; the same tokens at 1,024 per step (13 steps)
cut it by 11% (issue 31's measurement, from outside the project). What moves a fine-tuned dictionary
is the number of steps (a fresh Adam state moves each weight by about lr per step), so when
--batch-tokens is not given a kl+mse run takes about FINETUNE_STEPS steps: --tokens / FINETUNE_STEPS,
in whole --context rows, between one row and the local default. A budget that gives fewer than
MIN_FINETUNE_STEPS steps even at one row per step is refused before anything loads. Measured at the
two baseline budgets (262k and 1M tokens): docs/E2E.md, bench/finetune_numbers.sh.
"""

from __future__ import annotations

from ..errors import UserError

LOCAL_BATCH_TOKENS = 4096  # --batch-tokens when not given, for every loss but kl+mse
FINETUNE_STEPS = 48  # the measured fine-tune of the 1M-token baseline: 49k tokens at 1,024 per step
MIN_FINETUNE_STEPS = 12  # below this a fine-tune barely moves the dictionary (3 steps: CE -1%)


def default_batch_tokens(loss: str, tokens: int, context: int) -> int:
    """--batch-tokens when it is not given: the local default, or a kl+mse fine-tune's share of its budget."""
    if loss != "kl+mse":
        return LOCAL_BATCH_TOKENS
    rows = max(1, min(tokens // (FINETUNE_STEPS * context), LOCAL_BATCH_TOKENS // context))
    return rows * context


def check_finetune_budget(tokens: int, batch_tokens: int, context: int, given: bool) -> None:
    """Refuse a kl+mse budget too small to move the dictionary, saying what would do."""
    steps = tokens // batch_tokens
    if steps >= MIN_FINETUNE_STEPS:
        return
    need = MIN_FINETUNE_STEPS * context
    how = (
        f"lower --batch-tokens (at least {MIN_FINETUNE_STEPS} steps: --batch-tokens <= "
        f"{tokens // MIN_FINETUNE_STEPS // context * context}, whole rows of --context {context})"
        if given and tokens >= need
        else f"raise --tokens to at least {need:,} ({MIN_FINETUNE_STEPS} steps of one --context {context} row)"
    )
    raise UserError(
        f"--loss kl+mse: --tokens {tokens:,} at {batch_tokens:,} tokens per step is {steps} optimiser "
        f"step(s); a fine-tune needs at least {MIN_FINETUNE_STEPS} to move the dictionary "
        f"(measured: 3 steps cut the CE increase by 1%, docs/E2E.md): {how}"
    )
