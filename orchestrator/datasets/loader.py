"""Load JSONL benchmark files into :class:`~orchestrator.types.Problem` lists.

A :class:`DatasetFormat` maps a row's fields to a problem: which field holds the question, which
holds the reference answer and how to extract it, which holds the id, and how the model's answer
is to be extracted (``Problem.answer_format``). Built-in formats live in :data:`FORMATS`; without
a format, :func:`load_jsonl` detects one from the first row.

Contracts of :func:`load_jsonl`:

- One JSON object per line, UTF-8; blank lines are skipped; line numbers are 1-based and count
  blank lines, so they match an editor's.
- ``Problem.metadata`` holds ``{"source": <path as given>, "line": <line number>}`` plus the
  format's ``metadata_fields`` that the row has (MATH: ``subject``, ``level``).
- Ids: the row's id field when it has one (converted to ``str``; two rows with the same explicit
  id are an error), else the first 12 hex digits of the SHA-256 of the question text (UTF-8,
  after stripping surrounding whitespace, as in ``Problem.question``).
  The hashed id does not depend on the row's position, so reordering or filtering a file keeps
  every id. Rows with the same question get ``<hash>``, ``<hash>-2``, ``<hash>-3``, ... in file
  order.
- Every problem of a format with an answer field has a non-empty reference; a row whose reference
  cannot be extracted is an error, never a silently unanswerable problem.
- Every failure raises :class:`~orchestrator.errors.DatasetError` naming the file, the line and
  the field where it applies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.answers import ANSWER_FORMATS, extract_answer
from orchestrator.errors import DatasetError
from orchestrator.types import Problem

__all__ = ["FORMATS", "DatasetFormat", "detect_format", "load_jsonl", "question_id"]

ID_HASH_CHARS = 12
"""How many hex digits of the question's SHA-256 make a derived problem id."""


@dataclass(frozen=True)
class DatasetFormat:
    """How the fields of one JSONL row become a :class:`Problem`.

    Attributes:
        name: a label used in error messages (``gsm8k``, ``math``, ``custom``, ...).
        question_field: the field holding the question text (required in every row).
        answer_field: the field holding the reference, or None for unlabelled data (problems
            then have no reference).
        answer_rule: how the reference is extracted from ``answer_field``: an
            ``extract_answer`` format (``text`` takes the value as is, ``gsm8k`` the line after
            ``#### `` without thousands commas, ``boxed`` the last ``\\boxed{}``).
        solution_field: a fallback used when a row lacks ``answer_field`` (or it is null or
            empty): the reference is extracted from this field with ``solution_rule``.
        solution_rule: the ``extract_answer`` format applied to ``solution_field``.
        id_field: the field holding the problem id; a row without it gets a question-hash id.
        answer_format: ``Problem.answer_format``, i.e. how the MODEL's answer is extracted.
        metadata_fields: fields copied into ``Problem.metadata`` when a row has them.

    Raises:
        DatasetError: on construction, when a rule or answer format is not one of
            ``orchestrator.answers.ANSWER_FORMATS`` or a field name is empty.
    """

    name: str
    question_field: str
    answer_field: str | None = "answer"
    answer_rule: str = "text"
    solution_field: str | None = None
    solution_rule: str = "boxed"
    id_field: str | None = "id"
    answer_format: str = "auto"
    metadata_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        allowed = ", ".join(ANSWER_FORMATS)
        for attr in ("answer_rule", "solution_rule", "answer_format"):
            value = getattr(self, attr)
            if value not in ANSWER_FORMATS:
                raise DatasetError(
                    f"dataset format {self.name!r}: {attr}={value!r} is not an answer format; "
                    f"allowed: {allowed}"
                )
        for attr in ("question_field", "answer_field", "solution_field", "id_field"):
            value = getattr(self, attr)
            if value is not None and (not isinstance(value, str) or not value):
                raise DatasetError(
                    f"dataset format {self.name!r}: {attr}={value!r} must be a non-empty field name"
                )

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields this format reads (question, answer, solution, id), for messages."""
        names = (self.question_field, self.answer_field, self.solution_field, self.id_field)
        return tuple(n for n in names if n is not None)


FORMATS: dict[str, DatasetFormat] = {
    # GSM8K: the answer field is a worked solution ending in "#### <final answer>". Model outputs
    # are read with "auto" (boxed, then "####", then "answer is", then the last number).
    "gsm8k": DatasetFormat(name="gsm8k", question_field="question", answer_rule="gsm8k"),
    # MATH / MATH-500: the "answer" field is the LaTeX final answer; rows without it fall back to
    # the last \boxed{} of "solution". Model outputs use "auto" rather than "boxed": auto tries
    # \boxed{} first, so a model that boxes its answer is graded exactly as with "boxed", and one
    # that forgets still gets "The answer is ..." or its last number read instead of no answer.
    "math": DatasetFormat(
        name="math",
        question_field="problem",
        solution_field="solution",
        id_field="unique_id",
        metadata_fields=("subject", "level"),
    ),
    # {"question", "answer"} with the answer as is (no "####").
    "qa": DatasetFormat(name="qa", question_field="question"),
}
FORMATS["aime"] = dataclasses.replace(FORMATS["math"], name="aime", metadata_fields=("url",))
"""The built-in formats by name: ``gsm8k``, ``math``, ``qa`` and ``aime`` (= ``math``)."""


def question_id(question: str) -> str:
    """The derived id of a question: the first 12 hex digits of SHA-256 over its UTF-8 text."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:ID_HASH_CHARS]


def detect_format(row: dict[str, Any], source: str = "<row>") -> DatasetFormat:
    """Pick a built-in format from the fields of a (first) row.

    ``problem`` with ``answer`` or ``solution`` -> ``math``; ``question`` with an ``answer``
    containing ``####`` -> ``gsm8k``; ``question`` with another ``answer`` -> ``qa``.

    Raises:
        DatasetError: naming ``source`` and the fields present when no format fits.
    """
    if "problem" in row and ("answer" in row or "solution" in row):
        return FORMATS["math"]
    if "question" in row and "answer" in row:
        return FORMATS["gsm8k"] if "####" in str(row["answer"]) else FORMATS["qa"]
    present = ", ".join(sorted(row)) or "(none)"
    raise DatasetError(
        f"{source}: cannot detect the dataset format: expected the fields question+answer "
        f"(gsm8k, qa) or problem+answer/solution (math); the row has: {present}. Pass "
        f"format= (one of {', '.join(sorted(FORMATS))}) or question_field=/answer_field="
    )


def _resolve_format(
    format: str | DatasetFormat | None,
    first_row: dict[str, Any],
    where: str,
    overrides: dict[str, Any],
) -> DatasetFormat:
    """The named, given or detected format with the non-None ``overrides`` applied."""
    if isinstance(format, DatasetFormat):
        base = format
    elif isinstance(format, str):
        if format not in FORMATS:
            raise DatasetError(
                f"unknown dataset format {format!r}; known formats: {', '.join(sorted(FORMATS))}"
            )
        base = FORMATS[format]
    elif format is None:
        try:
            base = detect_format(first_row, where)
        except DatasetError:
            if overrides.get("question_field") is None:
                raise
            base = FORMATS["qa"]
    else:
        raise DatasetError(f"format must be a name or a DatasetFormat, not {format!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        base = dataclasses.replace(base, name=f"{base.name}+overrides", **changes)
    return base


def _read_rows(path: Path, source: str) -> list[tuple[int, dict[str, Any]]]:
    """The (line number, object) pairs of a JSONL file, blank lines skipped."""
    if not path.exists():
        raise DatasetError(
            f"dataset file {source} does not exist (resolved to {path.resolve()}); check the "
            f"path, or use a built-in source such as builtin:addition"
        )
    if not path.is_file():
        raise DatasetError(f"dataset path {source} is not a file; give the path of a .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DatasetError(f"{source}: cannot be read: {exc}") from exc
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{source}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}); each line "
                f"must be one JSON object"
            ) from exc
        if not isinstance(row, dict):
            raise DatasetError(
                f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}"
            )
        rows.append((lineno, row))
    if not rows:
        raise DatasetError(f"dataset file {source} is empty (no JSON rows)")
    return rows


def _scalar(row: dict[str, Any], field: str, where: str) -> str | None:
    """The field as a stripped string; None when absent, null or blank; error when not scalar."""
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DatasetError(
            f"{where}: field {field!r} must be a string or a number, got "
            f"{type(value).__name__}: {str(value)[:80]!r}"
        )
    return str(value).strip() or None


def _missing(where: str, fields: str, fmt: DatasetFormat, row: dict[str, Any]) -> DatasetError:
    """The error for a row that lacks a required field."""
    present = ", ".join(sorted(row)) or "(none)"
    return DatasetError(
        f"{where}: missing field {fields} (format {fmt.name}); the row has: {present}. Map "
        f"another field with question_field=/answer_field= or choose another format="
    )


def _reference(row: dict[str, Any], fmt: DatasetFormat, where: str) -> str | None:
    """Extract the reference answer of a row (None when the format has no answer field)."""
    if fmt.answer_field is None:
        return None
    field, rule = fmt.answer_field, fmt.answer_rule
    raw = _scalar(row, field, where)
    if raw is None and fmt.solution_field is not None:
        field, rule = fmt.solution_field, fmt.solution_rule
        raw = _scalar(row, field, where)
        if raw is None:
            raise _missing(where, f"{fmt.answer_field!r} (or {field!r})", fmt, row)
    elif raw is None:
        raise _missing(where, repr(field), fmt, row)
    ref = extract_answer(raw, rule)
    if not ref:
        raise DatasetError(
            f"{where}: no reference answer found in field {field!r} with rule {rule!r} "
            f"(value starts {raw[:80]!r}); fix the row or pass answer_rule="
        )
    return ref


def load_jsonl(
    path: str | Path,
    *,
    format: str | DatasetFormat | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    answer_rule: str | None = None,
    answer_format: str | None = None,
    system_prompt: str | None = None,
) -> list[Problem]:
    """Read a JSONL file of problems.

    Args:
        path: the file; one JSON object per line.
        format: a name from :data:`FORMATS`, a :class:`DatasetFormat`, or None to detect the
            format from the first row (see :func:`detect_format`; when nothing is detected but
            ``question_field`` is given, the ``qa`` format is the base).
        question_field, answer_field, id_field, answer_rule, answer_format: override the
            format's attribute of the same name when not None.
        system_prompt: set as every problem's ``system_prompt``.

    Returns:
        The problems in file order (see the module docstring for ids and metadata).

    Raises:
        DatasetError: a missing or empty file, a bad JSON line, a missing or non-scalar field, a
            reference that cannot be extracted, a duplicate explicit id, an unknown format.
    """
    source = str(path)
    rows = _read_rows(Path(path), source)
    overrides = {
        "question_field": question_field,
        "answer_field": answer_field,
        "id_field": id_field,
        "answer_rule": answer_rule,
        "answer_format": answer_format,
    }
    fmt = _resolve_format(format, rows[0][1], f"{source}:{rows[0][0]}", overrides)
    problems: list[Problem] = []
    line_of_id: dict[str, int] = {}
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        question = _scalar(row, fmt.question_field, where)
        if question is None:
            raise _missing(where, repr(fmt.question_field), fmt, row)
        reference = _reference(row, fmt, where)
        explicit = _scalar(row, fmt.id_field, where) if fmt.id_field is not None else None
        if explicit is not None:
            if explicit in line_of_id:
                raise DatasetError(
                    f"{where}: duplicate id {explicit!r} in field {fmt.id_field!r} (first on "
                    f"line {line_of_id[explicit]}); ids must be unique, fix the data or pass "
                    f"another id_field="
                )
            pid = explicit
        else:
            base = question_id(question)
            pid, k = base, 1
            while pid in line_of_id:
                k += 1
                pid = f"{base}-{k}"
        line_of_id[pid] = lineno
        metadata: dict[str, Any] = {"source": source, "line": lineno}
        metadata.update({f: row[f] for f in fmt.metadata_fields if f in row})
        problems.append(
            Problem(
                question=question,
                system_prompt=system_prompt,
                reference=reference,
                answer_format=fmt.answer_format,
                id=pid,
                metadata=metadata,
            )
        )
    return problems
