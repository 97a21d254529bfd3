"""Tests for ``div_se`` and ``idiv_se`` (strategies.div_se): prompts, parsing, votes, budget."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import strategies.self_consistency  # noqa: F401  (registers self_consistency)
from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Problem
from strategies.div_se import (
    DivSE,
    IDivSE,
    answer_hint,
    approach_prompt,
    combined_prompt,
    pair_approaches,
    parse_approach_answers,
)
from strategies.div_se_approaches import MATH_APPROACHES, load_approaches

REPO = Path(__file__).resolve().parents[3]
QUESTION = "What is 6*7?"
APPROACHES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


def last_user(request: GenerationRequest) -> str:
    assert request.messages is not None
    return request.messages[-1].content


def by_approach(answers: dict[str, str]) -> FakeBackend:
    """A backend answering each DIV-SE prompt by the approach it names ("" = no answer)."""

    def script(request: GenerationRequest, index: int) -> str:
        text = last_user(request)
        for name, ans in answers.items():
            if f"Approach: {name}." in text:
                return f"Using {name}: done. Answer: {ans}" if ans else f"Using {name}: unsure"
        raise AssertionError(f"no known approach in {text!r}")

    return FakeBackend(script=script)


def spans(node: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    own = [node] if node["kind"] == kind else []
    return own + [s for c in node.get("children", []) for s in spans(c, kind)]


# --- pure functions ---------------------------------------------------------------------------


def test_pair_approaches_takes_the_first_k_and_cycles_personas() -> None:
    assert pair_approaches(APPROACHES, None, 3) == [
        ("alpha", None),
        ("beta", None),
        ("gamma", None),
    ]
    assert pair_approaches(["a", "b"], None, 5) == [("a", None), ("b", None)]
    assert pair_approaches(APPROACHES, ["P", "Q"], 3) == [
        ("alpha", "P"),
        ("beta", "Q"),
        ("gamma", "P"),
    ]


def test_prompts_name_the_question_approach_persona_and_answer_format() -> None:
    p = approach_prompt("Q?", "work backwards", "a teacher", "auto")
    assert p.startswith("Q?\n\nApproach: work backwards. Think as a teacher would.\n")
    assert p.endswith('end with a line "Answer: X", where X is the final answer.')
    assert "\\boxed{X}" in approach_prompt("Q?", "a", None, "boxed")
    assert "Think as" not in approach_prompt("Q?", "a", None)
    assert answer_hint("gsm8k") == 'a line "#### X", where X is the final answer'
    c = combined_prompt("Q?", [("alpha", None), ("beta", "Turing")])
    assert "Solve this problem 2 times" in c
    assert "Approach 1: alpha.\nApproach 2: beta. Think as Turing would.\n" in c
    assert '"Approach N:" (N from 1 to 2)' in c


def test_parse_well_formed_sections() -> None:
    text = (
        "Approach 1: 6*7 = 42.\nAnswer: 42\n\n"
        "Approach 2: backwards.\nAnswer: 42\nApproach 3: x=41\nAnswer: 41"
    )
    parsed = parse_approach_answers(text, 3)
    assert parsed.method == "sections"
    assert parsed.answers == ["42", "42", "41"]
    assert parsed.sections[2] == "x=41\nAnswer: 41"


def test_parse_markdown_headers_missing_and_extra_sections() -> None:
    text = (
        "Sure! Here are the solutions.\n"
        "**Approach 1:** six sevens. **Answer: 42**\n"
        "### Approach 3 - table\nThe answer is \\boxed{40}.\n"
        "Approach 4: not asked for. Answer: 99\n"
        "Approach 0: nonsense. Answer: 98\n"
    )
    parsed = parse_approach_answers(text, 3)
    assert parsed.method == "sections"
    assert parsed.answers == ["42", None, "40"]
    assert parsed.sections[1] == ""


def test_parse_prefers_a_marked_answer_over_an_echoed_listing() -> None:
    text = (
        "Approach 1: Write an equation with 2 unknowns.\nApproach 2: Make a table.\n\n"
        "Approach 1: 6 * 7 = 42. Answer: 42\nApproach 2: rows of 7 -> 42.\nAnswer: 42\n"
    )
    parsed = parse_approach_answers(text, 2)
    assert parsed.answers == ["42", "42"]
    assert parsed.sections[0] == "6 * 7 = 42. Answer: 42"


def test_parse_header_number_is_not_an_answer() -> None:
    parsed = parse_approach_answers("Approach 1: Make a table.\nApproach 2: 5 + 3 = 8", 2)
    assert parsed.method == "sections"
    assert parsed.answers == [None, "8"]  # no number of its own in section 1; 8 unmarked in 2


def test_parse_answer_lines_without_headers() -> None:
    text = "1. Six sevens. Answer: 42\n2. Backwards. Answer: 41\n3. Table. Answer: 42\n4. Answer: 7"
    parsed = parse_approach_answers(text, 3)
    assert parsed.method == "answer_lines"
    assert parsed.answers == ["42", "41", "42"]
    short = parse_approach_answers("one. Answer: 3\ntwo. The answer is 3.", 4)
    assert short.answers == ["3", "3", None, None] and short.sections[3] == ""


def test_parse_falls_back_to_the_last_answer_of_the_text() -> None:
    parsed = parse_approach_answers("I think it is 40, no wait, 42.", 3)
    assert (parsed.method, parsed.fallback, parsed.answers) == ("fallback", "42", [None] * 3)
    single = parse_approach_answers("It is six sevens. The answer is 42.", 3)
    assert single.method == "fallback" and single.fallback == "42"  # one line is no list
    nothing = parse_approach_answers("I do not know.", 2)
    assert (nothing.method, nothing.fallback) == ("none", None)


def test_parse_with_other_answer_formats() -> None:
    text = "Approach 1: ... #### 12\nApproach 2: ... #### 1,200"
    assert parse_approach_answers(text, 2, "gsm8k").answers == ["12", "1200"]
    choice = "Approach 1: so the answer is (B).\nApproach 2: Answer: C"
    assert parse_approach_answers(choice, 2, "choice").answers == ["B", "C"]


# --- config -----------------------------------------------------------------------------------


def test_default_approaches_match_configs_math_yaml() -> None:
    assert load_approaches(REPO / "configs/approaches/math.yaml") == list(MATH_APPROACHES)
    assert [a for a, _ in DivSE().pairs] == list(MATH_APPROACHES)
    assert DivSE().config.temperature == 0.0 and IDivSE().config.max_tokens == 1024


def test_approaches_file_and_k(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("question_type: t\napproaches: [one, two, three]\n")
    strat = DivSE(approaches_file=str(path), k=2, personas=["P"])
    assert strat.pairs == (("one", "P"), ("two", "P"))
    assert strat.info() == {"k": 2, "approaches": ["one", "two"], "personas": ["P", "P"]}
    bare = tmp_path / "b.yaml"
    bare.write_text("- x\n- y\n")
    assert IDivSE(approaches_file=str(bare)).info() == {"k": 2, "approaches": ["x", "y"]}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"approaches": ["a"], "approaches_file": "x.yaml"}, "not both"),
        ({"approaches": []}, "approaches"),
        ({"approaches": ["a", " "]}, "non-empty"),
        ({"k": 0}, "k"),
        ({"approaches_file": "/nonexistent/approaches.yaml"}, "cannot read"),
        ({"temperatur": 0.1}, "temperatur"),
    ],
)
def test_bad_configs_are_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DivSE(config)


# --- div_se on the fake backend ---------------------------------------------------------------


async def test_div_se_one_greedy_call_per_approach_and_majority_vote() -> None:
    backend = by_approach({"alpha": "42", "beta": "41", "gamma": "42.0", "delta": ""})
    spec = {"strategy": "div_se", "approaches": APPROACHES[:4], "max_tokens": 64}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert backend.calls == 4
    assert all(r.n == 1 and r.temperature == 0.0 and r.max_tokens == 64 for r in backend.requests)
    assert sorted(last_user(r).split("Approach: ")[1].split(".")[0] for r in backend.requests) == [
        "alpha", "beta", "delta", "gamma",
    ]  # fmt: skip
    assert all(last_user(r).startswith(QUESTION + "\n\n") for r in backend.requests)
    assert result.answer == "42" and result.strategy == "div_se"
    assert result.candidate is not None and "alpha" in result.candidate.text
    d = result.details
    assert d["answers"] == ["42", "41", "42.0", None]
    assert d["votes"] == {"42": 2.0, "41": 1.0}
    assert d["confidence"] == pytest.approx(2 / 3, abs=1e-6)
    assert (d["k"], d["samples"], d["failed"]) == (4, 4, 0)
    assert d["approaches"] == APPROACHES[:4]
    assert len(result.candidates) == 4 and result.usage.calls == 4


async def test_div_se_trace_has_one_step_span_per_approach() -> None:
    backend = by_approach({"alpha": "1", "beta": "2"})
    spec = {"strategy": "div_se", "approaches": ["alpha", "beta"], "personas": ["Euler"]}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert result.trace is not None
    (root,) = result.trace["children"]
    assert root["name"] == "div_se" and root["attrs"]["votes"] == {"1": 1.0, "2": 1.0}
    steps = root["children"]
    assert [s["name"] for s in steps] == ["alpha", "beta"]
    assert steps[1]["kind"] == "step"
    assert steps[1]["attrs"] == {
        "index": 2, "approach": "beta", "persona": "Euler", "answer": "2", "failed": False,
    }  # fmt: skip
    assert [c["kind"] for s in steps for c in s["children"]] == ["backend", "backend"]
    assert result.answer == "1"  # a tie goes to the first-seen answer
    assert "Think as Euler would." in last_user(backend.requests[0])


async def test_div_se_k_selects_the_first_approaches() -> None:
    backend = FakeBackend(answers=["42"])
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "div_se", "k": 3})
    assert backend.calls == 3
    prompts = {last_user(r) for r in backend.requests}
    assert all(any(a in p for p in prompts) for a in MATH_APPROACHES[:3])
    assert not any(MATH_APPROACHES[3] in p for p in prompts)
    assert result.details["k"] == 3 and result.answer == "42"


async def test_div_se_skips_a_failed_call() -> None:
    backend = by_approach({"alpha": "5", "beta": "5", "gamma": "6"})
    backend.fail_calls = {0}
    spec = {"strategy": "div_se", "approaches": ["alpha", "beta", "gamma"]}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert result.details["failed"] == 1 and result.details["samples"] == 3
    assert "injected failure" in result.details["error"]
    assert result.details["answers"][0] is None
    assert sum(result.details["votes"].values()) == 2
    assert result.candidates[0].candidate.failed
    assert not result.budget_exhausted
    step = result.trace["children"][0]["children"][0] if result.trace else {}
    assert step["attrs"]["failed"] is True and step["children"][0]["error"]


async def test_div_se_handles_a_backend_returning_nothing() -> None:
    backend = FakeBackend(short_n=0)
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "div_se", "k": 2})
    assert result.answer is None and result.candidate is None
    assert result.details["failed"] == 2 and result.details["votes"] == {}
    assert all("no candidates" in (sc.candidate.error or "") for sc in result.candidates)


async def test_div_se_budget_exhaustion_votes_what_it_has() -> None:
    backend = by_approach({a: "3" for a in APPROACHES[:5]})
    spec = {"strategy": "div_se", "approaches": APPROACHES[:5]}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_calls=2))
    assert backend.calls == 2 and result.usage.calls == 2
    assert result.budget_exhausted is True
    assert result.answer == "3" and result.details["votes"] == {"3": 2.0}
    assert result.details["failed"] == 3 and "error" not in result.details
    assert [sc.candidate.error for sc in result.candidates][2:] == ["budget exhausted"] * 3


async def test_div_se_token_budget_narrows_and_never_overspends() -> None:
    backend = FakeBackend(answers=["42"])
    spec = {"strategy": "div_se", "k": 5, "max_tokens": 16}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_completion_tokens=40))
    assert result.usage.completion_tokens <= 40
    assert result.budget_exhausted is True
    assert result.answer == "42"


async def test_div_se_needs_no_capability_but_checks_its_inner_strategy() -> None:
    bare = FakeBackend(answers=["42"], capabilities=Capabilities())
    result = await Orchestrator([bare]).run(QUESTION, {"strategy": "div_se", "k": 2})
    assert result.answer == "42"
    bare = FakeBackend(capabilities=Capabilities())
    spec = {"strategy": "div_se", "inner": {"strategy": "best_of_n", "n": 2}}
    with pytest.raises(CapabilityError, match="logprobs"):
        await Orchestrator([bare]).run(QUESTION, spec)
    assert bare.calls == 0


async def test_div_se_with_an_inner_strategy_per_approach() -> None:
    def script(request: GenerationRequest, index: int) -> str:
        ans = "1" if "Approach: alpha." in last_user(request) else "2"
        return f"Answer: {ans if index % 3 else '9'}"  # each approach: 9, ans, ans

    backend = FakeBackend(script=script)
    spec = {
        "strategy": "div_se",
        "approaches": ["alpha", "beta", "gamma"],
        "inner": {"strategy": "self_consistency", "n": 3},
    }
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert backend.calls == 3 and all(r.n == 3 for r in backend.requests)
    assert result.details["answers"] == ["1", "2", "2"] and result.answer == "2"
    step = result.trace["children"][0]["children"][0] if result.trace else {}
    assert step["children"][0]["name"] == "self_consistency"
    assert step["children"][0]["children"][0]["kind"] == "backend"


async def test_div_se_nested_inside_self_consistency() -> None:
    backend = by_approach({"alpha": "7", "beta": "8", "gamma": "7"})
    spec = {
        "strategy": "self_consistency",
        "n": 2,
        "inner": {"strategy": "div_se", "approaches": ["alpha", "beta", "gamma"]},
    }
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert backend.calls == 6
    assert result.answer == "7" and result.details["votes"] == {"7": 2.0}
    (sc,) = result.trace["children"] if result.trace else []
    assert [c["name"] for c in sc["children"]] == ["div_se", "div_se"]
    assert len(sc["children"][0]["children"]) == 3


async def test_one_instance_serves_concurrent_runs() -> None:
    strat = DivSE(approaches=["alpha", "beta"])
    first = by_approach({"alpha": "1", "beta": "1"})
    second = by_approach({"alpha": "2", "beta": "2"})
    r1, r2 = await asyncio.gather(
        Orchestrator([first]).run(QUESTION, strat), Orchestrator([second]).run(QUESTION, strat)
    )
    assert (r1.answer, r2.answer) == ("1", "2")


async def test_cancellation_propagates() -> None:
    backend = FakeBackend(latency=5.0)
    task = asyncio.create_task(Orchestrator([backend]).run(QUESTION, "div_se"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- idiv_se on the fake backend --------------------------------------------------------------

IDIV_TEXT = (
    "Approach 1: 6 groups of 7 is 42.\nAnswer: 42\n\n"
    "Approach 2: Working backwards gives 41.\nAnswer: 41\n\n"
    "Approach 3: 6*7 = 42.\nAnswer: 42"
)


async def test_idiv_se_one_call_parses_and_votes() -> None:
    backend = FakeBackend(script=lambda request, index: IDIV_TEXT)
    spec = {"strategy": "idiv_se", "approaches": ["alpha", "beta", "gamma"]}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    (req,) = backend.requests
    assert req.n == 1 and req.temperature == 0.0 and req.max_tokens == 1024
    assert "Approach 1: alpha.\nApproach 2: beta.\nApproach 3: gamma." in last_user(req)
    assert result.answer == "42"
    d = result.details
    assert d["answers"] == ["42", "41", "42"] and d["parse"] == "sections"
    assert d["votes"] == {"42": 2.0, "41": 1.0}
    assert (d["k"], d["samples"], d["failed"]) == (3, 1, 0)
    assert result.candidate is not None and result.candidate.text == IDIV_TEXT
    assert result.candidate.tokens > 0
    views = [sc.candidate for sc in result.candidates]
    assert [v.answer for v in views] == ["42", "41", "42"] and all(v.tokens == 0 for v in views)
    assert views[1].text == "Working backwards gives 41.\nAnswer: 41"
    (root,) = result.trace["children"] if result.trace else []
    (step,) = root["children"]
    assert step["name"] == "approaches" and step["kind"] == "step"
    assert step["attrs"] == {"k": 3, "parse": "sections", "answers": ["42", "41", "42"]}
    assert step["children"][0]["kind"] == "backend"


async def test_idiv_se_falls_back_to_the_last_answer() -> None:
    backend = FakeBackend(answers=["42"])  # no sections: "... The answer is \boxed{42}."
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "idiv_se", "k": 3})
    assert result.answer == "42"
    assert result.details["parse"] == "fallback" and result.details["fallback_answer"] == "42"
    assert result.details["answers"] == [None, None, None]
    assert len(result.candidates) == 1 and result.candidates[0].candidate.tokens > 0


async def test_idiv_se_without_any_answer() -> None:
    backend = FakeBackend(script=lambda request, index: "I cannot solve this")
    result = await Orchestrator([backend]).run(QUESTION, "idiv_se")
    assert result.answer is None and result.candidate is None
    assert result.details["parse"] == "none" and result.details["votes"] == {}


async def test_idiv_se_failed_call_is_a_clean_no_answer() -> None:
    backend = FakeBackend(fail_calls=[0])
    result = await Orchestrator([backend]).run(QUESTION, "idiv_se")
    assert result.answer is None and result.candidate is None
    assert "injected failure" in result.details["error"]
    assert result.details["votes"] == {} and not result.budget_exhausted


async def test_idiv_se_truncated_by_the_budget_votes_the_parsed_part() -> None:
    backend = FakeBackend(script=lambda request, index: IDIV_TEXT)
    spec = {"strategy": "idiv_se", "approaches": ["alpha", "beta", "gamma"]}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_completion_tokens=15))
    assert result.usage.completion_tokens <= 15
    assert result.budget_exhausted is True
    assert result.details["answers"] == ["42", "41", None]
    assert result.answer == "42"  # a tie: the first-seen answer


async def test_idiv_se_with_problem_answer_format_and_system_prompt() -> None:
    backend = FakeBackend(script=lambda r, i: "Approach 1: x \\boxed{3}\nApproach 2: y \\boxed{3}")
    problem = Problem(question=QUESTION, system_prompt="be brief", answer_format="boxed")
    spec = {"strategy": "idiv_se", "approaches": ["a", "b"]}
    result = await Orchestrator([backend]).run(problem, spec)
    req = backend.requests[0]
    assert [m.role for m in req.messages or []] == ["system", "user"]
    assert "\\boxed{X}" in last_user(req)
    assert result.answer == "3" and result.details["votes"] == {"3": 2.0}


async def test_idiv_se_nested_inside_self_consistency() -> None:
    backend = FakeBackend(script=lambda request, index: IDIV_TEXT)
    spec = {
        "strategy": "self_consistency",
        "n": 2,
        "temperature": 0.7,
        "inner": {"strategy": "idiv_se", "approaches": ["a", "b", "c"], "temperature": 0.7},
    }
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert backend.calls == 2
    assert result.answer == "42" and result.details["votes"] == {"42": 2.0}
