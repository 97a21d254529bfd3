"""Datasets for evaluation: JSONL benchmark files, synthetic arithmetic, deterministic splits.

:func:`load_dataset` is the entry point: ``source`` is a JSONL file path (see
:func:`load_jsonl`) or ``builtin:NAME[?key=value&...]`` for generated problems (see
:data:`BUILTINS` and :func:`synthetic_problems`). The optional ``split`` (``dev:0.2``, see
:func:`split_problems`) is applied first, then ``limit`` keeps the first N problems, so a limited
dev set is always a prefix of the full dev set.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.datasets.loader import FORMATS, DatasetFormat, load_jsonl
from orchestrator.datasets.splits import SplitSpec, parse_split, split_problems
from orchestrator.datasets.synthetic import synthetic_problems
from orchestrator.errors import DatasetError
from orchestrator.types import Problem

__all__ = [
    "BUILTINS",
    "FIELD_MAPPING_KEYS",
    "FORMATS",
    "DatasetFormat",
    "SplitSpec",
    "load_dataset",
    "load_jsonl",
    "parse_builtin",
    "parse_split",
    "split_problems",
    "synthetic_problems",
]

BUILTIN_PREFIX = "builtin:"

BUILTINS: dict[str, dict[str, int | str]] = {
    "addition": {"n": 100, "ops": 1, "digits": 2, "operators": "+", "style": "plain", "seed": 0},
    "arith": {"n": 100, "ops": 2, "digits": 2, "operators": "+-*", "style": "word", "seed": 0},
}
"""The generated datasets: ``synthetic_problems`` arguments by name (query parameters override)."""

FIELD_MAPPING_KEYS = (
    "question_field",
    "answer_field",
    "id_field",
    "answer_rule",
    "answer_format",
    "system_prompt",
)


def parse_builtin(source: str) -> tuple[str, dict[str, int | str]]:
    """Parse ``builtin:NAME[?key=value&...]`` into the name and the full ``synthetic_problems``
    arguments (defaults overridden by the query).

    Values are taken literally, without URL decoding, so ``operators=+-*`` means plus, minus and
    times. ``n``, ``ops``, ``digits`` and ``seed`` must be integers; range checks are left to
    :func:`synthetic_problems`.

    Raises:
        DatasetError: an unknown name (the known ones are listed), a malformed, unknown,
            repeated or non-integer parameter (named).
    """
    rest = source.removeprefix(BUILTIN_PREFIX)
    name, _, query = rest.partition("?")
    if name not in BUILTINS:
        raise DatasetError(
            f"unknown builtin dataset {name!r} in {source!r}; known: "
            + ", ".join(f"{BUILTIN_PREFIX}{k}" for k in BUILTINS)
        )
    args = dict(BUILTINS[name])
    seen: set[str] = set()
    for part in query.split("&") if query else []:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise DatasetError(f"{source!r}: bad parameter {part!r}; expected key=value")
        if key not in args:
            raise DatasetError(f"{source!r}: unknown parameter {key!r}; allowed: {', '.join(args)}")
        if key in seen:
            raise DatasetError(f"{source!r}: parameter {key!r} is given twice")
        seen.add(key)
        if isinstance(args[key], int):
            try:
                args[key] = int(value)
            except ValueError:
                raise DatasetError(
                    f"{source!r}: parameter {key}={value!r} is not an integer"
                ) from None
        else:
            args[key] = value
    return name, args


def _builtin(source: str) -> list[Problem]:
    """Generate the problems of a ``builtin:`` source."""
    _, args = parse_builtin(source)
    try:
        return synthetic_problems(
            n=int(args["n"]),
            ops=int(args["ops"]),
            digits=int(args["digits"]),
            operators=str(args["operators"]),
            style=str(args["style"]),
            seed=int(args["seed"]),
        )
    except DatasetError as exc:
        raise DatasetError(f"{source!r}: {exc}") from exc


def load_dataset(
    source: str | Path,
    *,
    format: str | DatasetFormat | None = None,
    limit: int | None = None,
    split: str | SplitSpec | None = None,
    **field_mapping: str,
) -> list[Problem]:
    """Load problems from a JSONL file or a ``builtin:`` generator.

    Args:
        source: a file path, or ``builtin:NAME[?key=value&...]`` (``builtin:addition``,
            ``builtin:arith?ops=3&seed=1``; see :func:`parse_builtin`).
        format: the file's format (see :func:`load_jsonl`); not allowed with a builtin.
        limit: keep the first ``limit`` problems (after the split); None keeps all.
        split: ``NAME:FRACTION`` such as ``dev:0.2`` (see :func:`split_problems`), or None.
        **field_mapping: for files, ``question_field``, ``answer_field``, ``id_field``,
            ``answer_rule``, ``answer_format`` and ``system_prompt`` as in :func:`load_jsonl`;
            for builtins only ``system_prompt``.

    Raises:
        DatasetError: an unknown keyword, a bad limit or split, or any loading error.
    """
    unknown = sorted(set(field_mapping) - set(FIELD_MAPPING_KEYS))
    if unknown:
        raise DatasetError(
            f"load_dataset: unknown argument(s) {', '.join(unknown)}; allowed: "
            f"format, limit, split, {', '.join(FIELD_MAPPING_KEYS)}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DatasetError(f"load_dataset: limit={limit!r} is invalid; allowed: an integer >= 0")
    parsed_split = split if split is None or isinstance(split, SplitSpec) else parse_split(split)
    text = str(source)
    if isinstance(source, str) and text.startswith(BUILTIN_PREFIX):
        not_for_builtins = sorted(set(field_mapping) - {"system_prompt"})
        if format is not None or not_for_builtins:
            given = (["format"] if format is not None else []) + not_for_builtins
            raise DatasetError(
                f"{text!r}: {', '.join(given)} only apply to files; a builtin accepts "
                f"system_prompt only"
            )
        problems = _builtin(text)
        system_prompt = field_mapping.get("system_prompt")
        if system_prompt is not None:
            problems = [p.model_copy(update={"system_prompt": system_prompt}) for p in problems]
    else:
        problems = load_jsonl(source, format=format, **field_mapping)
    if parsed_split is not None:
        problems = split_problems(problems, parsed_split)
    return problems if limit is None else problems[:limit]
