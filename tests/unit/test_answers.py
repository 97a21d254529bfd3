"""Tests for orchestrator.answers: extraction, normalisation, equivalence and grouping."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.answers import (
    ANSWER_FORMATS,
    answers_equivalent,
    extract_answer,
    group_answers,
    normalize_answer,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _first_rows(name: str, n: int = 20) -> list[dict[str, Any]]:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (expected ../shared/data beside the repo)")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


# --- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"The set is \boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"first \boxed{1}, then \fbox{3}", "3"),
        (r"\boxed{5} and a truncated \boxed{\frac{1}{", "5"),
        ("no box here", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_answer(text, "boxed") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 1000 + 234 = 1,234 dollars.\n#### 1,234", "1234"),
        ("#### 12\n#### 18\nextra line", "18"),
        ("#### -7", "-7"),
        ("no marker", None),
    ],
)
def test_extract_gsm8k(text: str, expected: str | None) -> None:
    assert extract_answer(text, "gsm8k") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the answer is 42.", "42"),
        ("THE ANSWER IS 7", "7"),
        ("answer: 12", "12"),
        ("Final answer: $x^2+1$", "x^2+1"),
        ("**Final Answer:** 3.5", "3.5"),
        ("**Answer: 9**", "9"),
        ("The answer is **15**.", "15"),
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
        ("The answer is 1. Wait, no. The answer is 2.", "2"),
        ("The answer is always 37.", "37"),  # prose around one number: the number
        ("The answer is 1,234 dollars", "1234"),
        ("The answer is 5 \\text{ apples}", "5"),
        ("The answer is yes.", "yes"),  # no number: the words are the answer
        ("The answer is x = 5", "x = 5"),  # math, not prose
        ("The answer is \\sqrt{2}", "\\sqrt{2}"),  # LaTeX commands are not prose
        ("nothing to see", None),
    ],
)
def test_extract_answer_is(text: str, expected: str | None) -> None:
    assert extract_answer(text, "answer_is") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It costs 1,234,567 dollars", "1234567"),
        ("first 3 then -12.", "-12"),
        ("the value is 0.25 now", "0.25"),
        ("about 3/4 of them", "3/4"),
        ("12 minus 5 is 7, so 1,000.5", "1000.5"),
        ("no digits", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B).", "B"),
        ("I think (A) is tempting but the answer is (c)", "C"),
        ("Answer: D", "D"),
        ("Options (A) and (C) remain; (C) it is.", "C"),
        ("E", "E"),
        ("the answer is a dog", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_answer(text, "choice") == expected


def test_extract_text() -> None:
    assert extract_answer("  hello world \n", "text") == "hello world"
    assert extract_answer("   ", "text") is None


def test_auto_order() -> None:
    # boxed beats everything, gsm8k beats answer_is, answer_is beats the last number.
    assert extract_answer("The answer is 3. #### 4 \\boxed{5} 6") == "5"
    assert extract_answer("The answer is 3.\n#### 4\n6") == "4"
    assert extract_answer("The answer is 3. Checked with 6 steps") == "3"
    assert extract_answer("we get 10 and then 11") == "11"
    assert extract_answer("no answer at all") is None


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="allowed formats") as info:
        extract_answer("x", "latex")
    for fmt in ANSWER_FORMATS:
        assert fmt in str(info.value)


# --- normalisation and equivalence ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18.0", "18"),
        ("1,000", "1000"),
        ("0.50", "0.5"),
        (" $18$ ", "18"),
        ("18.", "18"),
        ("50\\%", "50"),
        ("\\text{Yes}", "yes"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("10,\\!000", "10000"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("18", "18.0"),
        ("18", "$18$"),
        ("18.0", "$18$"),
        ("1,000", "1000"),
        ("\\frac{1}{2}", "0.5"),
        ("3/4", "0.75"),
        ("\\dfrac{1}{2}", "\\frac12"),
        ("x+1", "1+x"),
        ("\\{1,2\\}", "\\{2,1\\}"),
    ],
)
def test_equivalent(a: str, b: str) -> None:
    assert answers_equivalent(a, b)


@pytest.mark.parametrize(("a", "b"), [("18", "19"), ("0.5", "0.50001"), ("x+1", "x+2")])
def test_not_equivalent(a: str, b: str) -> None:
    assert not answers_equivalent(a, b)


def test_none_and_empty_never_equivalent() -> None:
    assert not answers_equivalent(None, None)
    assert not answers_equivalent(None, "1")
    assert not answers_equivalent("1", None)
    assert not answers_equivalent("", "")


def test_equivalence_off_main_thread() -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(answers_equivalent("y+2", "2+y")))
    worker.start()
    worker.join(timeout=60)
    assert results == [True]


def test_group_answers() -> None:
    answers = ["18", "18.0", None, "$18$", "0.5", "\\frac12", "x+1", "1+x", "7", ""]
    assert group_answers(answers) == [[0, 1, 3], [4, 5], [6, 7], [8]]
    assert group_answers([]) == []
    assert group_answers([None, None]) == []


def test_group_answers_many_identical() -> None:
    answers: list[str | None] = ["1,000"] * 32 + ["1000.0"] * 31 + [None]
    assert group_answers(answers) == [list(range(63))]


# --- real data --------------------------------------------------------------------------------


def test_gsm8k_real_rows() -> None:
    for row in _first_rows("gsm8k_test_dev500.jsonl"):
        ans = extract_answer(row["answer"], "gsm8k")
        assert ans is not None and NUMBER_RE.fullmatch(ans), (ans, row["answer"][-80:])


def test_math500_real_rows() -> None:
    rows = _first_rows("math500.jsonl")
    failures = []
    for row in rows:
        extracted = extract_answer(row["solution"], "boxed")
        if not answers_equivalent(row["answer"], extracted):
            failures.append((row.get("unique_id"), row["answer"], extracted))
    for failure in failures:
        print("math500 mismatch:", failure)
    assert len(rows) - len(failures) >= 18, failures


def test_answer_key_groups_numbers_and_normal_forms_without_math_verify() -> None:
    from orchestrator.answers import answer_key

    assert answer_key("1/2") == answer_key("0.5") == answer_key("\\frac{1}{2}")
    assert answer_key("18") == answer_key("18.0") == answer_key("$18$")
    assert answer_key("18") != answer_key("19")
    assert answer_key(None) is None and answer_key("  ") is None
    assert answer_key("x^2") == "x^2"
