"""Prompt text for the explainer and the LLM-judged scorers, and how examples are rendered.

Activating tokens are marked `<<like this>>` (adjacent active tokens share one pair of marks);
with `show_activations` each marked span is followed by its activation level 0-9 relative to the
latent's strongest example, e.g. `<<token>>(7)`. Everything the judge must answer fits in one
token (Yes/No), so a client with log-probabilities needs no generation at all.
"""

from __future__ import annotations

Messages = list[dict]  # OpenAI chat format: [{"role": ..., "content": ...}]

EXPLAIN_SYSTEM = (
    "You are a meticulous AI researcher studying one feature of a neural network. You will see text "
    "excerpts where the feature is active; the tokens where it fires are marked <<like this>>, optionally "
    "followed by the activation level from 1 to 9. Find what the marked tokens and their contexts have in "
    "common and describe it in a short phrase (at most 15 words). Answer with one line in the form:\n"
    "[EXPLANATION]: <your short phrase>"
)

DETECTION_SYSTEM = (
    "You check explanations of a neural network feature. You get the explanation and one text excerpt. "
    "Answer Yes if the feature described by the explanation is present in the excerpt, otherwise No. "
    "Answer with one word: Yes or No."
)

FUZZING_SYSTEM = (
    "You check explanations of a neural network feature. You get the explanation and one text excerpt with "
    "some tokens marked <<like this>>. Answer Yes if the marked tokens are correctly described by the "
    "explanation, otherwise No. Answer with one word: Yes or No."
)

BATCH_SUFFIX = (
    "\n\nYou will get several numbered excerpts. Answer with a Python list of 0s and 1s, one per excerpt "
    "(1 = Yes, 0 = No), and nothing else, e.g. [1, 0, 1]."
)

EXPLANATION_PREFILL = "[EXPLANATION]:"


def render(
    pieces: list[str],
    acts: list[float] | None = None,
    max_act: float = 0.0,
    mark: bool = True,
    show_activations: bool = False,
    marked: list[bool] | None = None,
) -> str:
    """Join decoded tokens, wrapping runs of marked tokens in << >> (marked = acts > 0 by default)."""
    if marked is None:
        marked = [a > 0 for a in acts] if (acts is not None and mark) else [False] * len(pieces)
    out, i = [], 0
    while i < len(pieces):
        if not marked[i]:
            out.append(pieces[i])
            i += 1
            continue
        j = i
        while j < len(pieces) and marked[j]:
            j += 1
        text = "".join(pieces[i:j])
        body = text.lstrip() or text  # a whitespace-only token stays inside the marks
        lead = text[: len(text) - len(body)]
        out.append(f"{lead}<<{body}>>")
        if show_activations and acts is not None and max_act > 0:
            level = max(1, min(9, round(9 * max(acts[i:j]) / max_act)))
            out.append(f"({level})")
        i = j
    return "".join(out).replace("\n", "\\n")


def explain_messages(example_texts: list[str]) -> Messages:
    body = "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(example_texts))
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": f"{body}\n\nWhat do the marked tokens have in common?"},
    ]


def judge_messages(kind: str, explanation: str, text: str) -> Messages:
    """One excerpt, one Yes/No question (kind: detection | fuzzing)."""
    system = DETECTION_SYSTEM if kind == "detection" else FUZZING_SYSTEM
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Explanation: {explanation}\n\nExcerpt: {text}\n\nAnswer Yes or No."},
    ]


def judge_batch_messages(kind: str, explanation: str, texts: list[str]) -> Messages:
    """Several excerpts in one prompt; the answer is a list of 0/1 (the generation path)."""
    system = (DETECTION_SYSTEM if kind == "detection" else FUZZING_SYSTEM).rsplit(" Answer with one word", 1)[0]
    body = "\n".join(f"Excerpt {i + 1}: {t}" for i, t in enumerate(texts))
    return [
        {"role": "system", "content": system + BATCH_SUFFIX},
        {
            "role": "user",
            "content": f"Explanation: {explanation}\n\n{body}\n\nAnswer with a list of {len(texts)} numbers (0 or 1).",
        },
    ]
