"""Tests for ``ttc approaches`` (orchestrator.cli.approaches) and the approach lists it writes
(strategies.div_se_approaches): list parsing, YAML files, generation and the command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from orchestrator.backends.base import GenerationRequest
from orchestrator.budget import Budget
from orchestrator.cli import approaches as cmd
from orchestrator.cli import common
from orchestrator.errors import ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from strategies import div_se_approaches as ap

LIST_TEXT = (
    "Here are some approaches:\n"
    "1. Work backwards from the answer.\n"
    "2) **Draw a diagram**: sketch the situation\n"
    "   (this helps with geometry)\n"
    "(3) Write an equation\n"
    "4 - work BACKWARDS from the answer\n"
    "5: Guess and check\n"
    "6. Make a table\n"
    "7. Look for a pattern\n"
    "I hope this helps!"
)


def listing(request: GenerationRequest, index: int) -> str:
    return LIST_TEXT


# --- parsing ----------------------------------------------------------------------------------


def test_parse_numbered_list() -> None:
    assert ap.parse_numbered_list(LIST_TEXT) == [
        "Work backwards from the answer",
        "Draw a diagram: sketch the situation",
        "Write an equation",
        "Guess and check",
        "Make a table",
        "Look for a pattern",
    ]


def test_parse_bullets_only_without_numbers() -> None:
    text = "Approaches:\n- Use algebra\n* `Estimate` first\n\u2022 Use algebra.\n- ok"
    assert ap.parse_numbered_list(text) == ["Use algebra", "Estimate first"]
    assert ap.parse_numbered_list("1. Numbered\n- bullet") == ["Numbered"]


def test_parse_nothing_usable() -> None:
    assert ap.parse_numbered_list("") == []
    assert ap.parse_numbered_list("Just think hard about it.") == []
    assert ap.parse_numbered_list("1.\n2. ab\n3. **  **") == []


def test_clean_item_caps_long_items_at_a_word() -> None:
    long = "word " * 100
    cleaned = ap.clean_item(long)
    assert len(cleaned) <= ap.MAX_APPROACH_CHARS and cleaned.endswith("word")
    assert ap.clean_item(' "Quoted approach." ') == "Quoted approach"


def test_dedup_ignores_case_spacing_and_punctuation() -> None:
    assert ap.dedup(["Make a table", "make a  table!", "Make tables", "?!"]) == [
        "Make a table",
        "Make tables",
    ]


def test_slug_and_default_path() -> None:
    assert cmd.slugify("Math word problems (GSM8K)") == "math-word-problems-gsm8k"
    assert cmd.slugify("!!!") == "approaches"
    assert len(cmd.slugify("x" * 100)) == 60
    assert cmd.default_path("Logic puzzles") == Path("configs/approaches/logic-puzzles.yaml")


def test_prompt_asks_for_a_numbered_list() -> None:
    p = ap.approaches_prompt("  logic puzzles ", 7)
    assert p.startswith("List 7 different approaches to solving questions of this type: logic")
    assert "numbered list" in p


# --- files ------------------------------------------------------------------------------------


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.yaml"
    assert ap.write_approaches(path, "puzzles", ["A: b", "c 'd'"]) == path
    text = path.read_text()
    assert text.startswith("# ")
    assert yaml.safe_load(text) == {"question_type": "puzzles", "approaches": ["A: b", "c 'd'"]}
    assert ap.load_approaches(path) == ["A: b", "c 'd'"]


def test_write_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    ap.write_approaches(path, "t", ["one"])
    with pytest.raises(FileExistsError, match="--force"):
        ap.write_approaches(path, "t", ["two"])
    assert ap.load_approaches(path) == ["one"]
    ap.write_approaches(path, "t", ["two"], force=True)
    assert ap.load_approaches(path) == ["two"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("question_type: t\n", "non-empty list"),
        ("approaches: []\n", "non-empty list"),
        ("approaches: [ok, 3]\n", "approach 2"),
        ("- ok\n- '  '\n", "approach 2"),
        ("approaches: [unclosed\n", "invalid YAML"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        ap.load_approaches(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ap.load_approaches(tmp_path / "nope.yaml")


# --- generation -------------------------------------------------------------------------------


async def test_generate_approaches_keeps_k_distinct() -> None:
    backend = FakeBackend(script=listing)
    got = await cmd.generate_approaches(Orchestrator([backend]), "math word problems", 4)
    assert got.approaches == [
        "Work backwards from the answer",
        "Draw a diagram: sketch the situation",
        "Write an equation",
        "Guess and check",
    ]
    assert got.question_type == "math word problems" and got.error is None
    assert got.text == LIST_TEXT and got.usage.calls == 1 and got.usage.completion_tokens > 0
    (req,) = backend.requests
    assert req.temperature == 0.0 and req.max_tokens == 256 and req.n == 1
    assert req.messages is not None
    assert req.messages[-1].content == ap.approaches_prompt("math word problems", 4 + cmd.ASK_EXTRA)


async def test_generate_approaches_passes_options_and_budget() -> None:
    backend = FakeBackend(script=listing)
    got = await cmd.generate_approaches(
        Orchestrator([backend]),
        "t",
        2,
        temperature=0.5,
        max_tokens=64,
        budget=Budget(max_completion_tokens=10),
    )
    assert backend.requests[0].temperature == 0.5 and backend.requests[0].max_tokens == 10
    assert got.usage.completion_tokens <= 10
    assert got.approaches == ["Work backwards from the answer"]  # truncated by the budget


async def test_generate_approaches_failure_and_junk() -> None:
    failing = FakeBackend(fail_calls=[0])
    got = await cmd.generate_approaches(Orchestrator([failing]), "t", 3)
    assert got.approaches == [] and got.error is not None and "injected failure" in got.error
    junk = FakeBackend(script=lambda r, i: "No idea.")
    got = await cmd.generate_approaches(Orchestrator([junk]), "t", 3)
    assert got.approaches == [] and got.error is None and got.text == "No idea."
    with pytest.raises(ConfigError, match="k must be"):
        await cmd.generate_approaches(Orchestrator([junk]), "t", 0)


# --- CLI --------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ttc")
    cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["approaches", *argv])


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """``orchestrator_from`` returns an Orchestrator over a scripted FakeBackend."""
    backend = FakeBackend(script=listing)
    monkeypatch.setattr(cmd, "orchestrator_from", lambda args: Orchestrator([backend]))
    return backend


def test_cli_arguments_and_defaults() -> None:
    args = parse("math word problems")
    assert args.question_type == "math word problems" and args.k == 5
    assert (args.out, args.force, args.backend, args.backends, args.model) == (
        None, False, None, None, None,
    )  # fmt: skip
    assert (args.temperature, args.max_tokens, args.seed) == (0.0, 256, None)
    assert common.budget_from(args) is None
    args = parse("t", "--k", "3", "--out", "x.yaml", "--force", "--budget-calls", "1")
    assert (args.k, args.out, args.force) == (3, Path("x.yaml"), True)
    assert common.budget_from(args) == Budget(max_calls=1)


def test_cli_writes_the_default_path_and_prints(
    scripted: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cmd.cmd_approaches(parse("Math word problems", "--k", "3")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "1. Work backwards from the answer",
        "2. Draw a diagram: sketch the situation",
        "3. Write an equation",
    ]
    path = tmp_path / "configs/approaches/math-word-problems.yaml"
    assert f"wrote {Path('configs/approaches/math-word-problems.yaml')}" in err
    data = yaml.safe_load(path.read_text())
    assert data["question_type"] == "Math word problems" and len(data["approaches"]) == 3


def test_cli_refuses_to_overwrite_before_any_call(
    scripted: FakeBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.yaml"
    out.write_text("approaches: [keep]\n")
    assert cmd.cmd_approaches(parse("t", "--out", str(out))) == 2
    assert "--force" in capsys.readouterr().err
    assert scripted.calls == 0 and ap.load_approaches(out) == ["keep"]
    assert cmd.cmd_approaches(parse("t", "--out", str(out), "--force", "--k", "9")) == 0
    assert len(ap.load_approaches(out)) == 6
    assert "only 6 distinct" in capsys.readouterr().err


def test_cli_without_a_list_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("TTC_BACKENDS_FILE", "TTC_DEFAULT_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    backends = tmp_path / "backends.yaml"
    backends.write_text("default: fake\nbackends:\n  fake:\n    kind: fake\n")
    out = tmp_path / "a.yaml"
    code = cmd.cmd_approaches(parse("t", "--backends", str(backends), "--out", str(out)))
    assert code == 1 and not out.exists()
    assert "no numbered list" in capsys.readouterr().err


def test_cli_bad_k() -> None:
    with pytest.raises(ConfigError, match="--k"):
        cmd.cmd_approaches(parse("t", "--k", "0"))
