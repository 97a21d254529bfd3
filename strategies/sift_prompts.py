"""Default prompt templates of the ``sift`` strategy (reworded from Zeng et al. 2025).

Each template is plain text with named placeholders that ``render`` fills in one pass:
``{question}`` (the problem's question), ``{sticker}`` (a Sticker: the problem's key conditions
and its exact question) and ``{prediction}`` (a full step-by-step solution). Braces that are not
one of these placeholders (``\\boxed{}``, LaTeX) are kept as they are, so templates need no
escaping. Every template is a field of ``SiftConfig`` and can be overridden in the spec; the
config checks that an override keeps the placeholders its step needs (``REQUIRED``).
"""

from __future__ import annotations

import re

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""The answer instruction shared by the three prediction prompts."""

STICKER_FORMAT = "Conditions:\n1. ...\n2. ...\nQuestion: ..."
"""The Sticker layout every Sticker prompt asks for."""

Q2P = "{question}\n\n" + INSTRUCTION
"""q2p: the question alone (the prediction P_Q used as the fallback)."""

STICKER = (
    "Read the problem below and write its Sticker: the facts needed to solve it, without "
    "solving it. List every given condition as a short atomic fact (one quantity or relation "
    "per item), keeping the exact numbers, names and units, then state exactly what is asked. "
    "Do not add reasoning or calculations. Use this layout:\n"
    f"{STICKER_FORMAT}\n\n"
    "Problem:\n{question}"
)
"""Sticker generation: the query's key conditions and exact question, as numbered facts."""

A2P = (
    "Solve the problem described by the following conditions and question.\n\n"
    "{sticker}\n\n" + INSTRUCTION
)
"""a2p: the Sticker alone, then the answer instruction."""

Q_A2P = "{question}\n\nKey facts of this problem (its Sticker):\n{sticker}\n\n" + INSTRUCTION
"""q_a2p: the question, then the Sticker, then the answer instruction."""

FORWARD = (
    "Below are a problem and a draft Sticker meant to capture its key conditions and its "
    "question. Check the draft against the problem and write an improved Sticker: add missing "
    "conditions, correct wrong ones, drop redundant ones, make the question state exactly what "
    "the problem asks, and remove any inconsistency. Do not solve the problem. Output only the "
    f"improved Sticker, in this layout:\n{STICKER_FORMAT}\n\n"
    "Problem:\n{question}\n\nDraft Sticker:\n{sticker}"
)
"""Forward optimisation: the query and a candidate Sticker in, an improved Sticker out."""

INVERSE = (
    "Below is a step-by-step solution of a problem that is not shown. Reconstruct the Sticker "
    "the solution was based on: the conditions it used, as numbered atomic facts, and the "
    "question it answered. Include no reasoning steps and no computed results. Output only the "
    f"Sticker, in this layout:\n{STICKER_FORMAT}\n\n"
    "Solution:\n{prediction}"
)
"""Inverse generation: a full prediction in, the Sticker that led to it out."""

PLACEHOLDERS: tuple[str, ...] = ("question", "sticker", "prediction")
"""The placeholder names ``render`` knows."""

REQUIRED: dict[str, tuple[str, ...]] = {
    "q2p_prompt": ("question",),
    "sticker_prompt": ("question",),
    "a2p_prompt": ("sticker",),
    "q_a2p_prompt": ("question", "sticker"),
    "forward_prompt": ("question", "sticker"),
    "inverse_prompt": ("prediction",),
}
"""For each template field of ``SiftConfig``, the placeholders it must contain."""

_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def render(template: str, **fields: str) -> str:
    """Fill the ``{question}``/``{sticker}``/``{prediction}`` placeholders of ``template``.

    One pass: text substituted for a placeholder is never scanned again, and placeholders
    without a value in ``fields`` (and any other braces) are left as they are.
    """
    return _PLACEHOLDER_RE.sub(lambda m: fields.get(m.group(1), m.group(0)), template)


def missing_placeholders(template: str, needed: tuple[str, ...]) -> list[str]:
    """The placeholders of ``needed`` that ``template`` lacks, as ``{name}`` strings."""
    return [f"{{{name}}}" for name in needed if f"{{{name}}}" not in template]
