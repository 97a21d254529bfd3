"""Tests for orchestrator.datasets: JSONL loading, synthetic problems, splits, load_dataset."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.answers import answers_equivalent, extract_answer
from orchestrator.datasets import (
    BUILTINS,
    FORMATS,
    DatasetFormat,
    load_dataset,
    load_jsonl,
    parse_builtin,
    parse_split,
    split_problems,
    synthetic_problems,
)
from orchestrator.datasets.loader import detect_format, question_id
from orchestrator.datasets.splits import SplitSpec, split_value
from orchestrator.errors import ConfigError, DatasetError
from orchestrator.types import Problem

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"

# Real rows, embedded so that the parsers are tested even without ../shared/data:
# gsm8k_test_dev500.jsonl lines 1 and 147, math500.jsonl line 182.
GSM8K_ROW_1 = {
    "question": "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every "
    "morning and bakes muffins for her friends every day with four. She sells the remainder at the "
    "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every "
    "day at the farmers' market?",
    "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = "
    "$<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18",
}
GSM8K_ROW_147 = {
    "question": "Johnny is picking up the toys on the floor of his room.  He'd dumped a lego boxed "
    "set with 500 pieces on the floor, and another one that had 3 times more pieces than the 500 "
    "piece one, and another one that had 1/4 the number of pieces.  How many blocks does Johnny "
    "pick up if he picks up all the legos?",
    "answer": "The first set had 500 pieces, and the second set had 3 times as many as the first "
    "set, so the second set has 500*3=<<500*3=1500>>1500 pieces\nThe third set had one-quarter of "
    "the 500 pieces, so that means it had 500*.25= <<500*.25=125>>125 pieces\nIn total, that means "
    "Johnny picked up 500 + 1500+ 125= <<500+1500+125=2125>>2125 blocks\n#### 2,125",
}
MATH_ROW_182 = {
    "problem": "Simplify and write the result with a rational denominator: "
    "$$\\sqrt{\\sqrt[3]{\\sqrt{\\frac{1}{729}}}}$$",
    "solution": "First, notice that $729=3^6$.  We can begin simplifying from the innermost square "
    "root: $$\\sqrt{\\sqrt[3]{\\frac{1}{\\sqrt{729}}}}=\\sqrt{\\sqrt[3]{\\frac{1}{27}}}="
    "\\sqrt{\\frac{1}{3}}=\\frac{1}{\\sqrt{3}}=\\boxed{\\frac{\\sqrt{3}}{3}}$$",
    "answer": "\\frac{\\sqrt{3}}{3}",
    "subject": "Algebra",
    "level": 3,
    "unique_id": "test/algebra/1275.json",
}


def shared(name: str) -> Path:
    """A file of ../shared/data, or skip the test when the folder is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (expected ../shared/data beside the repo)")
    return path


def write_jsonl(path: Path, rows: list[Any], blank_after: tuple[int, ...] = ()) -> Path:
    """Write rows (dicts are JSON-encoded, strings written as is), blank lines after some."""
    lines: list[str] = []
    for i, row in enumerate(rows):
        lines.append(row if isinstance(row, str) else json.dumps(row))
        if i in blank_after:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def raw_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --- reference parsers on real rows -----------------------------------------------------------


def test_gsm8k_reference_is_the_text_after_hashes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW_1, GSM8K_ROW_147])
    problems = load_jsonl(path, format="gsm8k")
    assert [p.reference for p in problems] == ["18", "2125"]  # "2,125": thousands comma removed
    assert problems[0].question == GSM8K_ROW_1["question"]
    assert problems[0].answer_format == "auto"
    assert problems[0].metadata == {"source": str(path), "line": 1}


def test_math_reference_is_the_answer_field_else_the_boxed_solution(tmp_path: Path) -> None:
    no_answer = {k: v for k, v in MATH_ROW_182.items() if k != "answer"}
    path = write_jsonl(tmp_path / "m.jsonl", [MATH_ROW_182, no_answer | {"unique_id": "x"}])
    with_field, from_boxed = load_jsonl(path, format="math")
    # The \boxed{} content has a \frac with a nested \sqrt{}: braces are matched.
    assert with_field.reference == from_boxed.reference == "\\frac{\\sqrt{3}}{3}"
    assert with_field.id == "test/algebra/1275.json"
    assert with_field.metadata == {
        "source": str(path),
        "line": 1,
        "subject": "Algebra",
        "level": 3,
    }
    assert with_field.answer_format == "auto"


def test_real_gsm8k_dev_file() -> None:
    path = shared("gsm8k_test_dev500.jsonl")
    problems = load_jsonl(path)  # detected as gsm8k
    assert len(problems) == 500
    assert problems[0].reference == "18"
    assert len({p.id for p in problems}) == 500
    comma_rows = [
        (i, row) for i, row in enumerate(raw_rows(path)) if "," in row["answer"].split("####")[-1]
    ]
    assert comma_rows, "the dev file has answers with thousands commas"
    for i, row in comma_rows:
        assert problems[i].reference == row["answer"].split("####")[-1].strip().replace(",", "")
    assert all(p.reference and "," not in p.reference for p in problems)


def test_real_gsm8k_train_file() -> None:
    problems = load_jsonl(shared("gsm8k_train.jsonl"), format="gsm8k")
    assert len(problems) == 7473
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.reference for p in problems)


def test_real_math500_file() -> None:
    path = shared("math500.jsonl")
    problems = load_jsonl(path)  # detected as math
    assert len(problems) == 500
    rows = raw_rows(path)
    assert [p.id for p in problems] == [r["unique_id"] for r in rows]
    boxed = [extract_answer(r["solution"], "boxed") for r in rows]
    agree = sum(answers_equivalent(p.reference, b) for p, b in zip(problems, boxed, strict=True))
    assert agree >= 0.95 * len(problems)
    nested = [b for b in boxed if b and re.search(r"\\frac\{[^}]*\{", b)]
    assert nested, "some math500 answers nest braces inside \\frac"
    # Without the answer field, the references come from \boxed{} in the solutions.
    from_solution = load_jsonl(path, format="math", answer_field="no_such_field")
    assert [p.reference for p in from_solution] == boxed


def test_real_aime_file() -> None:
    problems = load_jsonl(shared("aime2024.jsonl"), format="aime")
    assert len(problems) == 30
    assert all(p.reference and p.reference.isdigit() for p in problems)
    assert problems[0].id == "60"  # the integer unique_id, as a string
    assert problems[0].metadata["url"].startswith("https://")


# --- detection and overrides ------------------------------------------------------------------


def test_auto_detection() -> None:
    assert detect_format({"question": "q", "answer": "a\n#### 5"}) is FORMATS["gsm8k"]
    assert detect_format({"question": "q", "answer": "5"}) is FORMATS["qa"]
    assert detect_format({"problem": "p", "solution": "\\boxed{1}"}) is FORMATS["math"]
    assert detect_format({"problem": "p", "answer": "1", "question": "p"}) is FORMATS["math"]
    with pytest.raises(DatasetError) as err:
        detect_format({"prompt": "p", "target": "t"}, "f.jsonl:1")
    assert "f.jsonl:1" in str(err.value) and "prompt, target" in str(err.value)


def test_detection_failure_names_the_file_and_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "p", "target": "t"}])
    with pytest.raises(DatasetError, match=r"odd\.jsonl:1.*prompt, target"):
        load_jsonl(path)
    problems = load_jsonl(path, question_field="prompt", answer_field="target")
    assert (problems[0].question, problems[0].reference) == ("p", "t")


def test_overrides_and_system_prompt(tmp_path: Path) -> None:
    rows = [{"q": "What is 2+2?", "sol": "so \\boxed{4}", "qid": 7}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    (p,) = load_jsonl(
        path,
        question_field="q",
        answer_field="sol",
        answer_rule="boxed",
        id_field="qid",
        answer_format="number",
        system_prompt="Be brief.",
    )
    assert (p.question, p.reference, p.id, p.answer_format) == ("What is 2+2?", "4", "7", "number")
    assert p.system_prompt == "Be brief."


def test_unlabelled_format_gives_no_reference(tmp_path: Path) -> None:
    fmt = DatasetFormat(name="questions", question_field="text", answer_field=None)
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "Why?"}])
    assert load_jsonl(path, format=fmt)[0].reference is None


# --- ids and blank lines ----------------------------------------------------------------------


def test_ids_hash_the_question_and_survive_reordering(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(5)]
    forward = load_jsonl(write_jsonl(tmp_path / "f.jsonl", rows))
    backward = load_jsonl(write_jsonl(tmp_path / "b.jsonl", rows[::-1]))
    assert forward[0].id == hashlib.sha256(b"q0").hexdigest()[:12] == question_id("q0")
    assert {p.question: p.id for p in forward} == {p.question: p.id for p in backward}


def test_duplicate_questions_get_distinct_ids(tmp_path: Path) -> None:
    rows = [{"question": "same", "answer": str(i)} for i in range(3)] + [
        {"question": "other", "answer": "x"}
    ]
    ids = [p.id for p in load_jsonl(write_jsonl(tmp_path / "d.jsonl", rows))]
    h = question_id("same")
    assert ids == [h, f"{h}-2", f"{h}-3", question_id("other")]


def test_duplicate_explicit_ids_are_an_error(tmp_path: Path) -> None:
    rows = [
        {"question": "a", "answer": "1", "id": "x"},
        {"question": "b", "answer": "2", "id": "x"},
    ]
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: duplicate id 'x'.*line 1"):
        load_jsonl(write_jsonl(tmp_path / "d.jsonl", rows))


def test_blank_lines_are_skipped_and_lines_counted(tmp_path: Path) -> None:
    rows = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    path = write_jsonl(tmp_path / "b.jsonl", rows, blank_after=(0,))
    problems = load_jsonl(path)
    assert [p.question for p in problems] == ["a", "b"]
    assert [p.metadata["line"] for p in problems] == [1, 3]


# --- error paths ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=r"nope.jsonl does not exist") as err:
        load_jsonl(path)
    assert isinstance(err.value, ConfigError)
    assert "check the path" in str(err.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a file"):
        load_jsonl(tmp_path)


def test_bad_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "a", "answer": "1"}, "{oops"])
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: invalid JSON"):
        load_jsonl(path)


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "arr.jsonl", [{"question": "a", "answer": "1"}, "[1, 2]"])
    with pytest.raises(DatasetError, match=r"arr\.jsonl:2: expected a JSON object, got list"):
        load_jsonl(path)


@pytest.mark.parametrize("path_text", ["", "\n  \n\n"])
def test_empty_file(tmp_path: Path, path_text: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(path_text)
    with pytest.raises(DatasetError, match=r"empty\.jsonl is empty"):
        load_jsonl(path)


def test_missing_question_field(tmp_path: Path) -> None:
    rows = [{"question": "a", "answer": "1"}, {"answer": "2", "note": "n"}]
    with pytest.raises(DatasetError) as err:
        load_jsonl(write_jsonl(tmp_path / "m.jsonl", rows, blank_after=(0,)))
    msg = str(err.value)
    assert "m.jsonl:3" in msg and "'question'" in msg and "answer, note" in msg


def test_missing_answer_field(tmp_path: Path) -> None:
    rows = [{"question": "a", "answer": "x\n#### 1"}, {"question": "b"}]
    with pytest.raises(DatasetError, match=r"m\.jsonl:2: missing field 'answer'.*has: question"):
        load_jsonl(write_jsonl(tmp_path / "m.jsonl", rows))


def test_missing_answer_and_solution_fields(tmp_path: Path) -> None:
    rows = [{"problem": "p", "level": 1}]
    with pytest.raises(DatasetError, match=r"m\.jsonl:1: missing field 'answer' \(or 'solution'\)"):
        load_jsonl(write_jsonl(tmp_path / "m.jsonl", rows), format="math")


def test_unextractable_reference(tmp_path: Path) -> None:
    rows = [{"question": "a", "answer": "x\n#### 1"}, {"question": "b", "answer": "no hashes"}]
    with pytest.raises(DatasetError, match=r"g\.jsonl:2: no reference answer.*'answer'.*'gsm8k'"):
        load_jsonl(write_jsonl(tmp_path / "g.jsonl", rows))


def test_non_scalar_field(tmp_path: Path) -> None:
    rows = [{"question": ["a"], "answer": "1"}]
    with pytest.raises(DatasetError, match=r"l\.jsonl:1: field 'question' must be a string"):
        load_jsonl(write_jsonl(tmp_path / "l.jsonl", rows), format="qa")


def test_unknown_format_and_bad_rules(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"unknown dataset format 'csv'.*gsm8k"):
        load_jsonl(path, format="csv")
    with pytest.raises(DatasetError, match=r"answer_rule='latex'.*boxed"):
        load_jsonl(path, answer_rule="latex")
    with pytest.raises(DatasetError, match="answer_format='fancy'"):
        DatasetFormat(name="x", question_field="q", answer_format="fancy")


# --- synthetic problems -----------------------------------------------------------------------


def _eval_int(expr: str) -> int:
    """Evaluate + - * over integers with Python's precedence (an independent check)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
        raise AssertionError(f"unexpected syntax in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


def _plain_expr(p: Problem) -> str:
    m = re.fullmatch(r"What is (.+)\?", p.question)
    assert m, p.question
    return m.group(1)


def test_plain_addition_matches_the_former_benchmark_generator() -> None:
    rng = random.Random(0)
    expected = []
    for _ in range(20):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expected.append((f"What is {a} + {b}?", str(a + b)))
    assert [(p.question, p.reference) for p in synthetic_problems(20)] == expected


def test_synthetic_is_deterministic_by_seed() -> None:
    args: dict[str, Any] = {"n": 30, "ops": 3, "operators": "+-*", "style": "word"}
    assert synthetic_problems(**args, seed=5) == synthetic_problems(**args, seed=5)
    assert synthetic_problems(**args, seed=5) != synthetic_problems(**args, seed=6)
    # Operator order does not matter.
    assert synthetic_problems(**args | {"operators": "*-+"}, seed=5) == synthetic_problems(
        **args, seed=5
    )


@pytest.mark.parametrize(
    ("ops", "digits", "operators"),
    [
        (1, 1, "+"),
        (2, 2, "+-"),
        (3, 3, "+-*"),
        (5, 2, "-"),
        (5, 1, "-*"),
        (4, 6, "*"),
        (5, 4, "+*"),
    ],
)
def test_synthetic_answers_ops_and_digits(ops: int, digits: int, operators: str) -> None:
    problems = synthetic_problems(200, ops=ops, digits=digits, operators=operators, seed=3)
    for i, p in enumerate(problems):
        expr = _plain_expr(p)
        assert p.reference == str(_eval_int(expr))  # parentheses make precedence = left-to-right
        assert p.answer_format == "number"
        assert p.id == f"arith-o{ops}-d{digits}-s3-{i}"
        numbers = re.findall(r"\d+", expr)
        symbols = re.findall(r"[-+*]", expr)
        assert len(numbers) == ops + 1 and len(symbols) == ops
        assert set(symbols) <= set(operators)
        assert all(len(n) == digits and n[0] != "0" for n in numbers)
        total = int(numbers[0])  # every left-to-right intermediate result is non-negative
        for sym, n in zip(symbols, numbers[1:], strict=True):
            total = (
                total + int(n) if sym == "+" else total - int(n) if sym == "-" else total * int(n)
            )
            assert total >= 0
        assert str(total) == p.reference


def test_word_problems_pose_the_same_arithmetic_as_plain() -> None:
    plain = synthetic_problems(50, ops=3, operators="+-*", style="plain", seed=9)
    word = synthetic_problems(50, ops=3, operators="+-*", style="word", seed=9)
    for p, w in zip(plain, word, strict=True):
        assert w.reference == p.reference and w.id == p.id
        assert re.findall(r"\d+", w.question) == re.findall(r"\d+", _plain_expr(p))
        assert w.question.endswith("does she have now?") or w.question.endswith("does he have now?")


def test_word_problem_example_shape() -> None:
    (p,) = synthetic_problems(1, style="word", seed=0)
    assert re.fullmatch(
        r"[A-Z][a-z]+ has \d+ [a-z]+\. (She|He) [a-z ]+\d+[a-z ]*\. How many [a-z]+ does "
        r"(she|he) have now\?",
        p.question,
    ) or re.fullmatch(r"[A-Z][a-z]+ has \d+ [a-z]+\. A friend gives .*", p.question), p.question


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n": -1}, r"n=-1 .*from 0 to 1000000"),
        ({"ops": 0}, r"ops=0 .*from 1 to 5"),
        ({"ops": 6}, r"ops=6 .*from 1 to 5"),
        ({"ops": True}, r"ops=True"),
        ({"digits": 0}, r"digits=0 .*from 1 to 6"),
        ({"digits": 7}, r"digits=7 .*from 1 to 6"),
        ({"operators": ""}, r"operators='' .*'\+-\*'"),
        ({"operators": "/"}, r"operators='/'"),
        ({"operators": "++"}, r"operators='\+\+' .*distinct"),
        ({"style": "fancy"}, r"style='fancy' .*plain, word"),
        ({"seed": "x"}, r"seed='x' .*integer"),
    ],
)
def test_synthetic_parameter_validation(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        synthetic_problems(**kwargs)


# --- splits -----------------------------------------------------------------------------------


def test_parse_split() -> None:
    assert parse_split("dev:0.2") == SplitSpec("dev", 0.2)
    assert parse_split(" Test : 0.25 ") == SplitSpec("test", 0.25)
    assert str(parse_split("rest:0.5")) == "rest:0.5"
    for bad, part in [
        ("dev", "expected NAME:FRACTION"),
        ("dev:0.2:1", "expected NAME:FRACTION"),
        ("train:0.2", "unknown split name 'train'"),
        ("dev:abc", "fraction 'abc'"),
        ("dev:0", "fraction '0'"),
        ("dev:1", "fraction '1'"),
        ("dev:nan", "fraction 'nan'"),
    ]:
        with pytest.raises(DatasetError, match=re.escape(part)):
            parse_split(bad)


def test_split_value_is_a_stable_fraction() -> None:
    value = split_value("abc")
    digest = hashlib.sha256(b"ttc-split:abc").digest()
    assert value == int.from_bytes(digest[:8], "big") / 2**64
    assert 0.0 <= value < 1.0
    assert split_value("abc", salt="other") != value


def test_splits_are_disjoint_complete_and_roughly_sized() -> None:
    problems = synthetic_problems(1000, ops=2, operators="+-", seed=1)
    dev = split_problems(problems, "dev:0.2")
    test = split_problems(problems, "test:0.2")
    assert split_problems(problems, "rest:0.2") == test
    dev_ids, test_ids = {p.id for p in dev}, {p.id for p in test}
    assert not dev_ids & test_ids
    assert dev_ids | test_ids == {p.id for p in problems}
    assert 150 <= len(dev) <= 250
    assert [p for p in problems if p.id in dev_ids] == dev  # original order kept
    assert {p.id for p in split_problems(problems, "dev:0.1")} <= dev_ids  # nested
    assert split_problems(problems, "dev:0.2", salt="other") != dev


def test_split_is_the_same_in_another_process() -> None:
    code = (
        "from orchestrator.datasets import synthetic_problems, split_problems\n"
        "ps = synthetic_problems(300, ops=2, operators='+-', seed=4)\n"
        "print(','.join(p.id for p in split_problems(ps, 'dev:0.3')))\n"
    )
    ids: list[str] = []
    for hash_seed in ("1", "2"):  # different str hashes: the split must not depend on hash()
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        ids.append(out.stdout.strip())
    here = [p.id for p in split_problems(synthetic_problems(300, 2, 2, "+-", seed=4), "dev:0.3")]
    assert ids[0] == ids[1] == ",".join(here)
    assert here


def test_split_needs_ids() -> None:
    with pytest.raises(DatasetError, match=r"problem #1 .* has no id"):
        split_problems([Problem(question="a", id="x"), Problem(question="b")], "dev:0.5")


# --- load_dataset -----------------------------------------------------------------------------


def test_builtin_defaults() -> None:
    addition = load_dataset("builtin:addition")
    assert addition == synthetic_problems(100, 1, 2, "+", "plain", 0)
    arith = load_dataset("builtin:arith")
    assert arith == synthetic_problems(100, 2, 2, "+-*", "word", 0)
    assert set(BUILTINS) == {"addition", "arith"}


def test_builtin_query_parameters() -> None:
    name, args = parse_builtin("builtin:arith?ops=3&operators=+-&n=7&seed=2&style=plain&digits=3")
    assert name == "arith"
    assert args == {"n": 7, "ops": 3, "digits": 3, "operators": "+-", "style": "plain", "seed": 2}
    problems = load_dataset("builtin:arith?ops=3&operators=+-*&n=7", system_prompt="Think.")
    assert len(problems) == 7 and all(p.system_prompt == "Think." for p in problems)


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("builtin:nope", r"unknown builtin dataset 'nope'.*builtin:addition, builtin:arith"),
        ("builtin:addition?size=3", r"unknown parameter 'size'; allowed: n, ops"),
        ("builtin:addition?n=abc", r"parameter n='abc' is not an integer"),
        ("builtin:addition?n", r"bad parameter 'n'; expected key=value"),
        ("builtin:addition?n=1&n=2", r"parameter 'n' is given twice"),
        ("builtin:addition?ops=9", r"builtin:addition\?ops=9.*ops=9 .*from 1 to 5"),
        ("builtin:addition?operators=/", r"operators='/'"),
    ],
)
def test_builtin_errors(source: str, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(source)


def test_split_then_limit() -> None:
    dev = load_dataset("builtin:addition?n=200", split="dev:0.5")
    assert load_dataset("builtin:addition?n=200", split="dev:0.5", limit=10) == dev[:10]
    assert load_dataset("builtin:addition", limit=0) == []


def test_load_dataset_argument_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"unknown argument.*question_feild"):
        load_dataset(str(path), question_feild="q")
    with pytest.raises(DatasetError, match="limit=-1"):
        load_dataset(str(path), limit=-1)
    with pytest.raises(DatasetError, match="unknown split name 'train'"):
        load_dataset(str(path), split="train:0.5")
    with pytest.raises(DatasetError, match="format, answer_field only apply to files"):
        load_dataset("builtin:addition", format="gsm8k", answer_field="x")


def test_load_dataset_reads_files(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "target": str(i)} for i in range(40)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    problems = load_dataset(path, question_field="prompt", answer_field="target", split="test:0.5")
    assert problems == split_problems(
        load_jsonl(path, question_field="prompt", answer_field="target"), "test:0.5"
    )
    assert (
        load_dataset(str(path), question_field="prompt", answer_field="target", limit=3)[
            2
        ].reference
        == "2"
    )
