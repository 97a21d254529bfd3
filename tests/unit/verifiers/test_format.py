"""Tests for the ``format`` verifier: regex and JSON Schema checks."""

from __future__ import annotations

import pytest

from orchestrator.budget import BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Score
from verifiers import build_verifier
from verifiers.format_check import Format, parse_json

PROBLEM = Problem(question="q")


def cand(text: str = "", answer: str | None = None, *, error: str | None = None) -> Candidate:
    return Candidate(text=text, answer=answer, error=error)


async def score(verifier: Format, cands: list[Candidate]) -> list[Score]:
    ctx = RunContext(PROBLEM, {"fake": FakeBackend()}, "fake", BudgetMeter(), Trace())
    scores = await verifier(PROBLEM, cands, ctx)
    assert all(s.verifier == "format" for s in scores)
    return scores


# --- regex ------------------------------------------------------------------------------------


async def test_regex_fullmatch_on_the_answer_by_default() -> None:
    scores = await score(
        Format(regex=r"-?\d+"), [cand(answer="42"), cand(answer="42 apples"), cand(answer="-7")]
    )
    assert [s.value for s in scores] == [1.0, 0.0, 1.0]
    assert scores[0].details == {}
    assert "does not fully match" in scores[1].details["reason"]


async def test_regex_search_mode() -> None:
    scores = await score(
        Format(regex=r"\d+", mode="search"), [cand(answer="42 apples"), cand(answer="none")]
    )
    assert [s.value for s in scores] == [1.0, 0.0]
    assert "has no match for" in scores[1].details["reason"]


async def test_regex_on_the_whole_text_with_inline_flags() -> None:
    verifier = Format(regex=r"(?is).*the answer is \\boxed\{.+\}\.", target="text")
    good = cand("Step one.\nThe ANSWER is \\boxed{4}.", answer=None)
    bad = cand("The answer is 4.", answer="4")
    assert [s.value for s in await score(verifier, [good, bad])] == [1.0, 0.0]


async def test_regex_reports_named_groups() -> None:
    (s,) = await score(Format(regex=r"(?P<num>\d+) (?P<unit>\w+)?"), [cand(answer="3 cm")])
    assert s.value == 1.0 and s.details == {"groups": {"num": "3", "unit": "cm"}}


async def test_missing_answer_and_failed_candidates_score_zero() -> None:
    scores = await score(
        Format(regex=".*"), [cand("text", answer=None), cand("x", answer="x", error="boom")]
    )
    assert [s.value for s in scores] == [0.0, 0.0]
    assert "no answer" in scores[0].details["reason"]
    assert scores[1].details["reason"] == "candidate failed: boom"


# --- json_schema ------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "steps": {"type": "array"}},
    "required": ["answer"],
}


async def test_json_schema_on_plain_json_and_fenced_block() -> None:
    verifier = Format(json_schema=SCHEMA, target="text")
    cands = [
        cand('{"answer": 42, "steps": []}'),
        cand('Here it is:\n```json\n{"answer": 7}\n```\nDone.'),
        cand('Sure! ```JSON\n{"answer": 7}\n``` and ```json\n{"answer": "x"}\n```'),
    ]
    assert [s.value for s in await score(verifier, cands)] == [1.0, 1.0, 1.0]


async def test_json_schema_failures_give_reasons() -> None:
    verifier = Format(json_schema=SCHEMA, target="text")
    cands = [
        cand('{"answer": "forty-two"}'),
        cand('{"steps": []}'),
        cand("not json at all"),
        cand("```json\n{broken\n```"),
    ]
    scores = await score(verifier, cands)
    assert [s.value for s in scores] == [0.0] * 4
    reasons = [s.details["reason"] for s in scores]
    assert reasons[0].startswith("schema violation at $.answer:") and "integer" in reasons[0]
    assert "'answer' is a required property" in reasons[1]
    assert reasons[2].startswith("invalid JSON") and "no ```json block" in reasons[2]
    assert reasons[3].startswith("invalid JSON in the ```json block")


async def test_json_schema_on_the_answer_and_format_keyword() -> None:
    verifier = Format(json_schema={"type": "string", "format": "date"})
    scores = await score(verifier, [cand(answer='"2024-02-29"'), cand(answer='"yesterday"')])
    assert [s.value for s in scores] == [1.0, 0.0]


def test_parse_json() -> None:
    assert parse_json("[1, 2]") == ([1, 2], None)
    value, reason = parse_json("nope")
    assert value is None and reason is not None


# --- config -----------------------------------------------------------------------------------


def test_exactly_one_check_must_be_set() -> None:
    with pytest.raises(ConfigError, match=r"exactly one of `regex`.*or `json_schema`"):
        Format()
    with pytest.raises(ConfigError, match="exactly one of"):
        Format(regex="x", json_schema={"type": "string"})


def test_invalid_regex_and_schema_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"regex: .*not a valid regular expression"):
        Format(regex="(unclosed")
    with pytest.raises(ConfigError, match=r"json_schema: .*not a valid JSON Schema"):
        Format(json_schema={"type": "nonsense"})
    with pytest.raises(ConfigError, match="target"):
        Format(regex="x", target="answers")


def test_describe_round_trip() -> None:
    verifier = build_verifier({"verifier": "format", "regex": r"\d+", "mode": "search"})
    assert isinstance(verifier, Format)
    assert verifier.describe() == {"verifier": "format", "regex": r"\d+", "mode": "search"}
    assert build_verifier(verifier.describe()).describe() == verifier.describe()
