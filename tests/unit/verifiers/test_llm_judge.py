"""Tests for the ``llm_judge`` verifier (pointwise and pairwise) on FakeBackend."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError, RegistryError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem
from verifiers import build_verifier
from verifiers.llm_judge import (
    RETRY_PROMPTS,
    LLMJudge,
    LLMJudgeConfig,
    parse_score,
    parse_verdict,
    schedule,
)

PROBLEM = Problem(question="What is 6 * 7?")
Judge = Callable[[GenerationRequest], str]


def judge_backend(reply: Judge, name: str = "judge", **kwargs: Any) -> FakeBackend:
    """A FakeBackend answering every request with ``reply(request)``."""
    return FakeBackend(name=name, script=lambda request, index: reply(request), **kwargs)


def prompt(request: GenerationRequest) -> str:
    assert request.messages is not None
    return request.messages[0].content


def section(text: str, name: str) -> str:
    """The text of the ``[name]`` section of a judge prompt."""
    match = re.search(rf"\[{re.escape(name)}\]\n(.*?)\n\n", text, re.S)
    assert match, (name, text)
    return match.group(1)


def number_in(text: str) -> int:
    return int(re.findall(r"\d+", text)[-1])


def grade_by_number(request: GenerationRequest) -> str:
    """Pointwise judge: the score is the number in the answer (mod 11)."""
    return f"Looks fine. Score: {number_in(section(prompt(request), 'Answer')) % 11}"


def prefer_larger(request: GenerationRequest) -> str:
    """Pairwise judge preferring the answer with the larger number."""
    text = prompt(request)
    a, b = number_in(section(text, "Answer A")), number_in(section(text, "Answer B"))
    return "Verdict: A" if a > b else "Verdict: B"


def make_ctx(*backends: FakeBackend, budget: Budget | None = None) -> RunContext:
    by_name = {b.name: b for b in backends}
    return RunContext(PROBLEM, by_name, backends[0].name, BudgetMeter(budget), Trace(), seed=3)


def cand(text: str, answer: str | None = None, error: str | None = None) -> Candidate:
    return Candidate(text=text, tokens=3, answer=answer or text, error=error)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 7", 7),
        ("score: 7/10", 7),
        ("**Score:** 8", 8),
        ("The answer is correct.\nScore: 10", 10),
        ("7/10", 7),
        ("I would give it 6 out of 10.", 6),
        ("The final grade is **9**", 9),
        ("5", 5),
        ("  3.\n", 3),
        ("Score (0-10): 7", 7),
        ("On a scale from 0 to 10, my rating is 3.", 3),
        ("I rate this answer 8/10", 8),
        ("Score: 7.5", 7.5),
        ("Rating: 4.", 4),
        ("Score: 0", 0),
        ("Score: 12. On reflection, Score: 8", 8),
        ("Score: 15", None),
        ("Score: -3", None),
        ("11/10", None),
        ("The answer is wrong.", None),
        ("There are 3 apples and 4 pears.", None),
        ("", None),
    ],
)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Verdict: A", "A"),
        ("verdict: b", "B"),
        ("**Verdict:** B", "B"),
        ("Verdict: Answer A", "A"),
        ("A", "A"),
        ("(B)", "B"),
        ("B.", "B"),
        ("Answer A is better.", "A"),
        ("The better answer is B.", "B"),
        ("A better answer is B", "B"),
        ("B is better because it adds correctly.", "B"),
        ("A: the first one is right", "A"),
        ("Both are equally good.", None),
        ("A good answer would show the steps.", None),
        ("I cannot decide.", None),
        ("", None),
    ],
)
def test_parse_verdict(text: str, expected: str | None) -> None:
    assert parse_verdict(text) == expected


# --- config -----------------------------------------------------------------------------------


def test_templates_must_use_their_placeholders() -> None:
    with pytest.raises(ConfigError, match=r"pointwise_template.*\['answer', 'question'\]"):
        LLMJudge(pointwise_template="Grade: {question}")
    with pytest.raises(ConfigError, match="pairwise_template"):
        LLMJudge(pairwise_template="{question} {answer_a} {answer_b} {extra}")
    with pytest.raises(ConfigError, match="not a valid format string"):
        LLMJudge(pointwise_template="{question} {answer")
    with pytest.raises(ConfigError, match="mode"):
        LLMJudge(mode="listwise")


def test_registered_and_described() -> None:
    v = build_verifier({"verifier": "llm_judge", "mode": "pairwise", "backend": "judge"})
    assert isinstance(v, LLMJudge) and not v.candidate_needs.logprobs
    assert v.describe() == {"verifier": "llm_judge", "mode": "pairwise", "backend": "judge"}


# --- pointwise --------------------------------------------------------------------------------


async def test_pointwise_scores_and_request() -> None:
    judge = judge_backend(grade_by_number)
    ctx = make_ctx(judge)
    verifier = LLMJudge(temperature=0.3, max_tokens=32)
    scores = await verifier(PROBLEM, [cand("It is 7"), cand("It is 10"), cand("It is 2")], ctx)
    assert [s.value for s in scores] == pytest.approx([0.7, 1.0, 0.2])
    assert scores[0].details["judge_score"] == 7 and scores[0].details["attempts"] == 1
    assert scores[0].details["raw"] == "Looks fine. Score: 7"
    request = judge.requests[0]
    assert (request.temperature, request.max_tokens, request.n) == (0.3, 32, 1)
    assert PROBLEM.question in prompt(request) and '"Score: N"' in prompt(request)


async def test_pointwise_custom_template() -> None:
    judge = judge_backend(lambda r: "Score: 4")
    verifier = LLMJudge(pointwise_template="Q={question} A={answer} -> Score?")
    await verifier(PROBLEM, [cand("x")], make_ctx(judge))
    assert prompt(judge.requests[0]) == f"Q={PROBLEM.question} A=x -> Score?"


async def test_pointwise_retry_then_success() -> None:
    def reply(request: GenerationRequest) -> str:
        assert request.messages is not None
        return "Score: 6" if len(request.messages) == 3 else "I think it is fine"

    judge = judge_backend(reply)
    (score,) = await LLMJudge()(PROBLEM, [cand("x")], make_ctx(judge))
    assert score.value == pytest.approx(0.6) and score.details["attempts"] == 2
    assert "parse_failed" not in score.details
    retry = judge.requests[1].messages
    assert retry is not None and [m.role for m in retry] == ["user", "assistant", "user"]
    assert (
        retry[1].content == "I think it is fine" and retry[2].content == RETRY_PROMPTS["pointwise"]
    )


@pytest.mark.parametrize("retries", [0, 1, 2])
async def test_pointwise_retries_then_failure_score(retries: int) -> None:
    judge = judge_backend(lambda r: "No idea")
    verifier = LLMJudge(retries=retries, failure_score=0.1)
    (score,) = await verifier(PROBLEM, [cand("x")], make_ctx(judge))
    assert score.value == 0.1
    assert score.details["parse_failed"] is True and score.details["raw"] == "No idea"
    assert score.details["attempts"] == retries + 1 == judge.calls


async def test_pointwise_judges_identical_candidates_once_and_skips_failed() -> None:
    judge = judge_backend(grade_by_number)
    cands = [cand("It is 7"), cand("", error="boom"), cand("It is 7"), cand("It is 3")]
    scores = await LLMJudge()(PROBLEM, cands, make_ctx(judge))
    assert [s.value for s in scores] == pytest.approx([0.7, 0.0, 0.7, 0.3])
    assert scores[1].details["failed"] is True and scores[2].details["duplicate_of"] == 0
    assert judge.calls == 2


async def test_pointwise_same_text_different_answer_is_judged_twice() -> None:
    judge = judge_backend(grade_by_number)
    await LLMJudge()(PROBLEM, [cand("It is 7", "7"), cand("It is 7", None)], make_ctx(judge))
    assert judge.calls == 2


async def test_pointwise_backend_error_and_unknown_backend() -> None:
    judge = judge_backend(lambda r: "Score: 9", fail_calls={0})
    scores = await LLMJudge()(PROBLEM, [cand("a"), cand("b")], make_ctx(judge))
    assert sorted(s.value for s in scores) == [0.0, 0.9]
    assert any("injected failure" in s.details.get("error", "") for s in scores)
    with pytest.raises(RegistryError, match="nope"):
        await LLMJudge(backend="nope")(PROBLEM, [cand("a")], make_ctx(judge))


async def test_pointwise_budget_exhausted_mid_scoring() -> None:
    ctx = make_ctx(judge_backend(lambda r: "Score: 9"), budget=Budget(max_calls=1))
    scores = await LLMJudge()(PROBLEM, [cand("a"), cand("b"), cand("c")], ctx)
    assert [s.value for s in scores] == pytest.approx([0.9, 0.0, 0.0])
    assert [s.details.get("budget_exhausted", False) for s in scores] == [False, True, True]
    assert "parse_failed" not in scores[1].details and ctx.meter.exhausted


async def test_judge_calls_are_charged_and_traced_in_the_verifier_span() -> None:
    ctx = make_ctx(judge_backend(lambda r: "Score: 5 is fair", prompt_tokens=40))
    await LLMJudge()(PROBLEM, [cand("a"), cand("b")], ctx)
    assert (ctx.meter.usage.calls, ctx.meter.usage.prompt_tokens) == (2, 80)
    assert ctx.meter.usage.completion_tokens == 8  # four words each
    (span,) = ctx.trace.root.children
    assert span.kind == "verifier" and span.name == "llm_judge"
    assert [(c.kind, c.name, c.completion_tokens) for c in span.children] == [
        ("backend", "judge", 4),
        ("backend", "judge", 4),
    ]


# --- pairwise ---------------------------------------------------------------------------------


async def test_pairwise_round_robin_win_rates_in_both_orders() -> None:
    judge = judge_backend(prefer_larger)
    cands = [cand("It is 2"), cand("It is 9"), cand("It is 5")]
    scores = await LLMJudge(mode="pairwise")(PROBLEM, cands, make_ctx(judge))
    assert [s.value for s in scores] == [0.0, 1.0, 0.5]
    assert [s.details["wins"] for s in scores] == [0, 4, 2]
    assert all(s.details["comparisons"] == 4 for s in scores)
    assert judge.calls == 6  # 3 pairs, both orders
    shown = {
        (section(prompt(r), "Answer A"), section(prompt(r), "Answer B")) for r in judge.requests
    }
    assert ("It is 2", "It is 9") in shown and ("It is 9", "It is 2") in shown


async def test_pairwise_both_orders_cancels_position_bias() -> None:
    always_a = judge_backend(lambda r: "Verdict: A")
    cands = [cand("It is 2"), cand("It is 9"), cand("It is 5")]
    scores = await LLMJudge(mode="pairwise")(PROBLEM, cands, make_ctx(always_a))
    assert [s.value for s in scores] == [0.5, 0.5, 0.5]
    one_order = judge_backend(prefer_larger)
    verifier = LLMJudge(mode="pairwise", both_orders=False)
    scores = await verifier(PROBLEM, cands, make_ctx(one_order))
    assert [s.value for s in scores] == [0.0, 1.0, 0.5] and one_order.calls == 3


async def test_pairwise_skips_identical_and_failed_candidates() -> None:
    judge = judge_backend(prefer_larger)
    cands = [cand("It is 4"), cand("It is 4"), cand("", error="boom"), cand("It is 8")]
    scores = await LLMJudge(mode="pairwise")(PROBLEM, cands, make_ctx(judge))
    assert [s.value for s in scores] == [0.0, 0.0, 0.0, 1.0]
    assert scores[1].details["duplicate_of"] == 0 and scores[2].details["failed"] is True
    assert judge.calls == 2


async def test_pairwise_single_distinct_candidate_has_no_evidence() -> None:
    judge = judge_backend(prefer_larger)
    scores = await LLMJudge(mode="pairwise")(PROBLEM, [cand("x 1"), cand("x 1")], make_ctx(judge))
    assert [s.value for s in scores] == [0.5, 0.5] and judge.calls == 0


async def test_pairwise_unparseable_verdicts_are_undecided() -> None:
    judge = judge_backend(lambda r: "They are both fine.")
    verifier = LLMJudge(mode="pairwise", retries=1)
    scores = await verifier(PROBLEM, [cand("x 1"), cand("x 2")], make_ctx(judge))
    assert [s.value for s in scores] == [0.5, 0.5]
    assert scores[0].details["undecided"] == 2 and scores[0].details["comparisons"] == 0
    assert judge.calls == 4  # 2 games, each asked twice
    retry = judge.requests[1].messages
    assert retry is not None and retry[-1].content == RETRY_PROMPTS["pairwise"]


async def test_pairwise_random_pairing_beyond_max_round_robin() -> None:
    judge = judge_backend(prefer_larger)
    cands = [cand(f"It is {i}") for i in range(10)]
    verifier = LLMJudge(mode="pairwise", max_round_robin=8, comparisons_per_candidate=2)
    scores = await verifier(PROBLEM, cands, make_ctx(judge))
    assert judge.calls <= 2 * 2 * 5  # two rounds of five pairs, both orders
    assert all(0.0 <= s.value <= 1.0 and s.details["comparisons"] <= 4 for s in scores)
    assert scores[9].value in (0.5, 1.0) and scores[0].value in (0.0, 0.5)


def test_schedule() -> None:
    import random

    cfg = LLMJudgeConfig(mode="pairwise")
    assert schedule([0, 1, 2], cfg, random.Random(0)) == [
        (0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1),
    ]  # fmt: skip
    cfg = LLMJudgeConfig(mode="pairwise", both_orders=False)
    assert schedule([0, 1, 2], cfg, random.Random(0)) == [(0, 1), (2, 0), (1, 2)]
    cfg = LLMJudgeConfig(mode="pairwise", max_round_robin=3, comparisons_per_candidate=3)
    games = schedule(list(range(9)), cfg, random.Random(0))
    pairs = [tuple(sorted(g)) for g in games[::2]]
    assert len(pairs) == len(set(pairs)) <= 12
    counts = [sum(i in p for p in pairs) for i in range(9)]
    assert max(counts) <= 3


async def test_pairwise_budget_exhausted_drops_the_remaining_games() -> None:
    judge = judge_backend(prefer_larger)
    ctx = make_ctx(judge, budget=Budget(max_calls=2))
    cands = [cand("It is 2"), cand("It is 9"), cand("It is 5")]
    scores = await LLMJudge(mode="pairwise")(PROBLEM, cands, ctx)
    assert judge.calls == 2  # (0, 1) and (1, 0) only
    assert [s.value for s in scores] == [0.0, 1.0, 0.5]
    assert all(s.details["budget_exhausted"] for s in scores)
    assert scores[2].details["comparisons"] == 0


# --- end to end -------------------------------------------------------------------------------


def judge_or_sample(judge: Judge) -> FakeBackend:
    """One backend that samples answers 3, 9, 5, 9 and judges with ``judge``."""
    answers = iter(["3", "9", "5", "9"] * 4)

    def script(request: GenerationRequest, index: int) -> str:
        if "impartial judge" in prompt(request):
            return judge(request)
        return f"The answer is \\boxed{{{next(answers)}}}"

    return FakeBackend(script=script)


@pytest.mark.parametrize("mode", ["pointwise", "pairwise"])
async def test_best_of_n_with_llm_judge_end_to_end(mode: str) -> None:
    judge = grade_by_number if mode == "pointwise" else prefer_larger
    backend = judge_or_sample(judge)
    spec = {"strategy": "best_of_n", "n": 4, "verifier": {"verifier": "llm_judge", "mode": mode}}
    result = await Orchestrator([backend]).run("What is 6 * 7?", spec)
    assert result.answer == "9" and not result.budget_exhausted
    assert result.details["best_score"] == pytest.approx(1.0 if mode == "pairwise" else 0.9)
    # one sampling call; pointwise 3 distinct answers, pairwise 3 pairs in both orders
    assert result.usage.calls == 1 + (3 if mode == "pointwise" else 6)
    assert result.trace is not None
    (strategy,) = result.trace["children"]
    verifier = strategy["children"][-1]
    assert verifier["kind"] == "verifier" and verifier["name"] == "llm_judge"
    assert all(c["kind"] == "backend" for c in verifier["children"])


async def test_best_of_n_with_a_separate_judge_backend() -> None:
    policy = FakeBackend(name="policy", answers=["3", "9", "5"])
    judge = judge_backend(lambda r: "Score: 8")
    spec = {
        "strategy": "best_of_n",
        "n": 3,
        "verifier": {"verifier": "llm_judge", "backend": "judge"},
    }
    result = await Orchestrator([policy, judge]).run("q", spec)
    assert (policy.calls, judge.calls) == (1, 3)
    assert [sc.score for sc in result.candidates] == [0.8, 0.8, 0.8]


async def test_reply_prefix_prefills_the_judge_where_the_backend_can() -> None:
    judge = judge_backend(lambda r: " 7 because it is right")
    (score,) = await LLMJudge(reply_prefix="Score:")(PROBLEM, [cand("x")], make_ctx(judge))
    assert score.value == pytest.approx(0.7)
    assert score.details["raw"] == "Score: 7 because it is right"
    (request,) = judge.requests
    assert request.continue_final is True and request.messages is not None
    assert request.messages[-1].role == "assistant" and request.messages[-1].content == "Score:"
    plain = judge_backend(lambda r: "Score: 4", capabilities=Capabilities())
    (score,) = await LLMJudge(reply_prefix="Score:")(PROBLEM, [cand("x")], make_ctx(plain))
    assert score.value == pytest.approx(0.4) and plain.requests[0].continue_final is False


@pytest.mark.parametrize(
    "template", ["{question:>999999999} {answer}", "{question!r} {answer}", "{question} {answer.x}"]
)
def test_templates_take_plain_placeholders_only(template: str) -> None:
    with pytest.raises(ConfigError, match="pointwise_template"):
        build_verifier({"verifier": "llm_judge", "pointwise_template": template})
