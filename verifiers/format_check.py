"""The ``format`` verifier: does the output have the required shape? Scores 0 or 1.

Two checks, exactly one of which is configured:

- ``regex``: a Python regular expression applied with ``re.fullmatch`` (``mode="fullmatch"``,
  the default) or ``re.search`` (``mode="search"``). Inline flags work (``(?i)``, ``(?s)``).
- ``json_schema``: the string is parsed as JSON (or, when it is not JSON, the first fenced
  ````json`` block inside it is) and validated against the JSON Schema with ``jsonschema``. The
  schema's ``$schema`` picks the draft (default: the latest); ``format`` keywords are checked.

``target`` picks the string checked: the candidate's extracted ``answer`` (the default; a
candidate without one fails) or its whole ``text``. Failed candidates score 0. A failure's
``details`` hold a ``reason``; a regex success with named groups reports them as ``groups``.

Example::

    {"verifier": "format", "regex": r"-?\\d+", "target": "answer"}
    {"verifier": "format", "target": "text",
     "json_schema": {"type": "object", "required": ["answer"]}}
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
from jsonschema.exceptions import best_match
from pydantic import Field, field_validator, model_validator

from orchestrator.context import RunContext
from orchestrator.registry import verifiers
from orchestrator.trust import privileged, tuning
from orchestrator.types import Candidate, Problem, Score
from verifiers.base import Verifier, VerifierConfig

_JSON_BLOCK_RE = re.compile(r"```json[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_MAX_REASON_CHARS = 300


class FormatConfig(VerifierConfig):
    """``format`` options. Exactly one of ``regex`` and ``json_schema`` must be set."""

    regex: str | None = Field(
        None,
        description="a Python regular expression the string must match",
        json_schema_extra=privileged(
            "code",
            "a regular expression the server runs: a pathological one can take unbounded CPU",
        ),
    )
    mode: Literal["fullmatch", "search"] = Field(
        "fullmatch",
        description="regex only: match the whole string, or find it anywhere",
        json_schema_extra=tuning(),
    )
    json_schema: dict[str, Any] | None = Field(
        None,
        description="a JSON Schema the string, parsed as JSON, must satisfy",
        json_schema_extra=privileged(
            "code", "a JSON Schema the server evaluates; its patterns are regular expressions"
        ),
    )
    target: Literal["answer", "text"] = Field(
        "answer",
        description="check the extracted answer or the whole completion text",
        json_schema_extra=tuning(),
    )

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _exactly_one_check(self) -> FormatConfig:
        if (self.regex is None) == (self.json_schema is None):
            raise ValueError(
                "set exactly one of `regex` (a regular expression) or `json_schema` "
                "(a JSON Schema object)"
            )
        return self


def parse_json(source: str) -> tuple[Any, str | None]:
    """``source`` parsed as JSON, falling back to its first fenced ````json`` block.

    Returns:
        ``(value, None)`` on success, or ``(None, reason)`` when neither parses.
    """
    try:
        return json.loads(source), None
    except ValueError as exc:
        error = f"invalid JSON: {exc}"
    block = _JSON_BLOCK_RE.search(source)
    if block is None:
        return None, f"{error} (and no ```json block found)"
    try:
        return json.loads(block.group(1)), None
    except ValueError as exc:
        return None, f"invalid JSON in the ```json block: {exc}"


@verifiers.register("format")
class Format(Verifier):
    """1.0 when the answer (or text) matches ``regex`` or satisfies ``json_schema``, else 0.0."""

    Config = FormatConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg: FormatConfig = self.config
        self._pattern = re.compile(cfg.regex) if cfg.regex is not None else None
        self._validator: Any = None
        if cfg.json_schema is not None:
            cls = jsonschema.validators.validator_for(cfg.json_schema)
            self._validator = cls(cfg.json_schema, format_checker=cls.FORMAT_CHECKER)

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        return [self._score_one(c) for c in candidates]

    def _score_one(self, candidate: Candidate) -> Score:
        if candidate.failed:
            return self._fail(f"candidate failed: {candidate.error}")
        source = candidate.answer if self.config.target == "answer" else candidate.text
        if source is None:
            return self._fail("no answer was extracted from the candidate")
        if self._pattern is not None:
            return self._check_regex(self._pattern, source)
        return self._check_schema(source)

    def _check_regex(self, pattern: re.Pattern[str], source: str) -> Score:
        fullmatch = self.config.mode == "fullmatch"
        match = pattern.fullmatch(source) if fullmatch else pattern.search(source)
        if match is None:
            how = "does not fully match" if fullmatch else "has no match for"
            return self._fail(f"the {self.config.target} {how} {pattern.pattern!r}")
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        return Score(value=1.0, verifier=self.name, details={"groups": groups} if groups else {})

    def _check_schema(self, source: str) -> Score:
        value, reason = parse_json(source)
        if reason is not None:
            return self._fail(reason)
        error = best_match(self._validator.iter_errors(value))
        if error is not None:
            return self._fail(f"schema violation at {error.json_path}: {error.message}")
        return Score(value=1.0, verifier=self.name)

    def _fail(self, reason: str) -> Score:
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 3] + "..."
        return Score(value=0.0, verifier=self.name, details={"reason": reason})
