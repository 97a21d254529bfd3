"""Synthetic arithmetic problems of controlled difficulty.

Each problem is a chain ``x0 op1 x1 op2 x2 ...`` evaluated LEFT TO RIGHT, with ``ops``
operations drawn from ``operators`` and operands of exactly ``digits`` digits. Every intermediate
result is non-negative: a subtraction never takes more than what is there, keeping enough for the
subtractions still to come. Multipliers are at least 2.

Two renderings of the same chain:

- ``plain``: ``What is 23 + 45?``; parentheses are added where left-to-right order differs from
  the usual precedence (``(23 + 45) * 3``), so the expression evaluates to the reference with
  ordinary precedence too.
- ``word``: ``Ana has 23 marbles. She gets 45 more. How many marbles does she have now?``, one
  sentence per operation, from fixed templates.

Determinism: the numbers are drawn from ``random.Random(seed)`` and the wording (names,
objects, templates) from a second generator, ``random.Random(f"ttc-synthetic-words:{seed}")``
(string seeds are hashed with SHA-512, not ``hash()``); the global generator is never used. So the
same arguments give the same problems in every process, and ``plain`` and ``word`` with the same
arguments pose the same arithmetic. With one operator no draw is spent on choosing it:
``synthetic_problems(n, 1, 2, "+", "plain", seed)`` draws two ``randint(10, 99)`` per problem,
exactly like the verifier benchmark's former generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.errors import DatasetError
from orchestrator.types import Problem

__all__ = ["MAX_DIGITS", "MAX_OPS", "OPERATORS", "STYLES", "synthetic_problems"]

MAX_OPS = 5
MAX_DIGITS = 6
MAX_N = 1_000_000
OPERATORS = "+-*"
STYLES: tuple[str, ...] = ("plain", "word")

_NAMES: tuple[tuple[str, str, str, str], ...] = (
    # name, subject, object, possessive pronoun
    ("Ana", "she", "her", "her"),
    ("Ben", "he", "him", "his"),
    ("Carla", "she", "her", "her"),
    ("Dev", "he", "him", "his"),
    ("Elif", "she", "her", "her"),
    ("Farid", "he", "him", "his"),
    ("Gita", "she", "her", "her"),
    ("Hugo", "he", "him", "his"),
    ("Iris", "she", "her", "her"),
    ("Jonas", "he", "him", "his"),
)
_THINGS: tuple[tuple[str, str], ...] = (
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("apple", "apples"),
    ("coin", "coins"),
    ("stamp", "stamps"),
    ("book", "books"),
    ("pencil", "pencils"),
    ("shell", "shells"),
    ("card", "cards"),
    ("bead", "beads"),
)
# Placeholders: {S} subject pronoun (capitalised), {O} object pronoun, {P} possessive
# (capitalised), {n} the operand, {things} the object noun agreeing with n, {plural} its plural.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (
        "{S} gets {n} more.",
        "{S} finds {n} more {things}.",
        "A friend gives {O} {n} more {things}.",
        "{S} buys {n} more {things}.",
    ),
    "-": (
        "{S} gives away {n} {things}.",
        "{S} loses {n} {things}.",
        "{S} sells {n} {things}.",
        "{S} gives {n} {things} to a friend.",
    ),
    "*": (
        "{S} then has {n} times as many {plural} as before.",
        "{P} collection of {plural} grows to {n} times its size.",
    ),
}


@dataclass(frozen=True)
class _Chain:
    """A start operand and the (operator, operand) steps applied to it left to right."""

    start: int
    steps: tuple[tuple[str, int], ...]

    def value(self) -> int:
        """The left-to-right result."""
        total = self.start
        for op, x in self.steps:
            total = total + x if op == "+" else total - x if op == "-" else total * x
        return total


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` when it is an int (not a bool) within [lo, hi]; else a DatasetError."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DatasetError(
            f"synthetic problems: {name}={value!r} is invalid; allowed: an integer from {lo} "
            f"to {hi}"
        )
    return value


def _check_operators(operators: object) -> str:
    """The operators in canonical ``+-*`` order, so ``"*+"`` and ``"+*"`` are the same."""
    if (
        not isinstance(operators, str)
        or not operators
        or any(c not in OPERATORS for c in operators)
        or len(set(operators)) != len(operators)
    ):
        raise DatasetError(
            f"synthetic problems: operators={operators!r} is invalid; allowed: a non-empty "
            f"string of distinct characters from {OPERATORS!r}, e.g. '+' or '+-*'"
        )
    return "".join(c for c in OPERATORS if c in operators)


def _draw_chain(rng: random.Random, ops: int, digits: int, operators: str) -> _Chain:
    """Draw one chain: the operators first (only with a choice), then the operands in order."""
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    seq = [rng.choice(operators) if len(operators) > 1 else operators for _ in range(ops)]
    subtractions_left = seq.count("-")
    # Invariant: before each step, current >= lo * (subtractions still to come), so every
    # subtraction can take at least lo. lo * MAX_OPS <= hi for every digit count, so it holds.
    current = rng.randint(max(lo, lo * subtractions_left), hi)
    start = current
    steps: list[tuple[str, int]] = []
    for op in seq:
        if op == "-":
            subtractions_left -= 1
            x = rng.randint(lo, min(hi, current - lo * subtractions_left))
            current -= x
        elif op == "+":
            x = rng.randint(lo, hi)
            current += x
        else:
            x = rng.randint(max(lo, 2), hi)
            current *= x
        steps.append((op, x))
    return _Chain(start, tuple(steps))


def _render_plain(chain: _Chain) -> str:
    """``What is <expr>?`` with parentheses wherever left-to-right differs from precedence."""
    expr, has_sum = str(chain.start), False
    for op, x in chain.steps:
        if op == "*" and has_sum:
            expr, has_sum = f"({expr})", False
        expr = f"{expr} {op} {x}"
        has_sum = has_sum or op != "*"
    return f"What is {expr}?"


def _render_word(rng: random.Random, chain: _Chain) -> str:
    """A short story: a start sentence, one sentence per step, then the question."""
    name, subj, obj, poss = rng.choice(_NAMES)
    singular, plural = rng.choice(_THINGS)

    def noun(n: int) -> str:
        return singular if n == 1 else plural

    sentences = [f"{name} has {chain.start} {noun(chain.start)}."]
    for op, x in chain.steps:
        template = rng.choice(_TEMPLATES[op])
        sentences.append(
            template.format(
                S=subj.capitalize(),
                O=obj,
                P=poss.capitalize(),
                n=x,
                things=noun(x),
                plural=plural,
            )
        )
    sentences.append(f"How many {plural} does {subj} have now?")
    return " ".join(sentences)


def synthetic_problems(
    n: int = 100,
    ops: int = 1,
    digits: int = 2,
    operators: str = "+",
    style: str = "plain",
    seed: int = 0,
) -> list[Problem]:
    """Generate ``n`` arithmetic problems, deterministic by their arguments.

    Args:
        n: how many problems (0 to 1,000,000).
        ops: operations per problem (1 to 5).
        digits: digits of every operand (1 to 6; 1 digit means 1-9, never 0).
        operators: the allowed operations, a non-empty subset of ``+-*`` (order ignored).
        style: ``plain`` (``What is 23 + 45?``) or ``word`` (a short word problem).
        seed: seeds ``random.Random``; any integer.

    Returns:
        Problems with ``reference`` = the exact integer result as a string (never negative),
        ``answer_format="number"``, ``id=f"arith-o{ops}-d{digits}-s{seed}-{i}"`` (i from 0) and
        ``metadata`` = ``{"source": "synthetic", "ops", "digits", "operators", "style",
        "seed"}``. The id does not encode operators or style: ids are unique within one call.

    Raises:
        DatasetError: naming the parameter, its value and the allowed range.
    """
    _check_int("n", n, 0, MAX_N)
    _check_int("ops", ops, 1, MAX_OPS)
    _check_int("digits", digits, 1, MAX_DIGITS)
    operators = _check_operators(operators)
    if style not in STYLES:
        raise DatasetError(
            f"synthetic problems: style={style!r} is invalid; allowed: {', '.join(STYLES)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"synthetic problems: seed={seed!r} is invalid; allowed: an integer")
    rng = random.Random(seed)
    words = random.Random(f"ttc-synthetic-words:{seed}")
    metadata = {
        "source": "synthetic",
        "ops": ops,
        "digits": digits,
        "operators": operators,
        "style": style,
        "seed": seed,
    }
    problems: list[Problem] = []
    for i in range(n):
        chain = _draw_chain(rng, ops, digits, operators)
        question = _render_plain(chain) if style == "plain" else _render_word(words, chain)
        problems.append(
            Problem(
                question=question,
                reference=str(chain.value()),
                answer_format="number",
                id=f"arith-o{ops}-d{digits}-s{seed}-{i}",
                metadata=dict(metadata),
            )
        )
    return problems
