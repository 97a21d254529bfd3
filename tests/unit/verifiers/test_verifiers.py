"""Tests for the verifier contract and the built-in verifiers."""

from __future__ import annotations

import math

import pytest

from orchestrator.budget import BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError, RegistryError
from orchestrator.registry import verifiers as registry
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Score, TokenLogprob
from verifiers import Verifier, build_verifier
from verifiers.builtin import MajorityVote, MeanLogprob, ReferenceMatch


@registry.register("_test_short_count")
class ShortCount(Verifier):
    """Breaks the contract: one score too few."""

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        return [Score(value=1.0, verifier=self.name) for _ in candidates[1:]]


def make_ctx(problem: Problem) -> RunContext:
    backend = FakeBackend()
    return RunContext(problem, {"fake": backend}, "fake", BudgetMeter(), Trace())


def cand(
    answer: str | None, logprobs: list[float] | None = None, *, error: str | None = None
) -> Candidate:
    lps = None if logprobs is None else [TokenLogprob(token="t", logprob=x) for x in logprobs]
    return Candidate(
        text=f"answer {answer}",
        tokens=len(logprobs) if logprobs else 3,
        logprobs=lps,
        answer=answer,
        error=error,
        finish_reason="error" if error else "stop",
    )


async def score(
    verifier: Verifier, cands: list[Candidate], problem: Problem | None = None
) -> list[float]:
    problem = problem or Problem(question="q", reference="42")
    scores = await verifier(problem, cands, make_ctx(problem))
    assert all(s.verifier == verifier.name for s in scores)
    return [s.value for s in scores]


# --- reference_match --------------------------------------------------------------------------


async def test_reference_match_scores_equivalent_answers() -> None:
    values = await score(ReferenceMatch(), [cand("42"), cand("42.0"), cand("41"), cand(None)])
    assert values == [1.0, 1.0, 0.0, 0.0]


async def test_reference_match_needs_a_reference() -> None:
    with pytest.raises(ConfigError, match="reference"):
        await score(ReferenceMatch(), [cand("42")], Problem(question="q"))


# --- majority_vote ----------------------------------------------------------------------------


async def test_majority_vote_shares() -> None:
    cands = [cand("1"), cand("2"), cand("1"), cand(None), cand("1.0"), cand("3")]
    problem = Problem(question="q")
    scores = await MajorityVote()(problem, cands, make_ctx(problem))
    # five answered; "1" (three, counting 1.0) has 3/5, "2" and "3" 1/5, no answer 0
    assert [s.value for s in scores] == pytest.approx([0.6, 0.2, 0.6, 0.0, 0.6, 0.2])
    assert [s.details["votes"] for s in scores] == [3, 1, 3, 0, 3, 1]


async def test_majority_vote_ignores_failed_candidates() -> None:
    cands = [cand("1"), cand("1", error="boom"), cand("2")]
    assert await score(MajorityVote(), cands) == pytest.approx([0.5, 0.0, 0.5])


async def test_majority_vote_with_no_answers() -> None:
    assert await score(MajorityVote(), [cand(None), cand(None)]) == [0.0, 0.0]


# --- mean_logprob -----------------------------------------------------------------------------


async def test_mean_logprob_is_exp_of_the_mean() -> None:
    cands = [cand("1", [-0.1, -0.3]), cand("2", [0.0]), cand("3", [-2.0, -4.0, -6.0])]
    problem = Problem(question="q")
    scores = await MeanLogprob()(problem, cands, make_ctx(problem))
    assert [s.value for s in scores] == pytest.approx([math.exp(-0.2), 1.0, math.exp(-4.0)])
    assert [s.details["mean_logprob"] for s in scores] == pytest.approx([-0.2, 0.0, -4.0])


async def test_mean_logprob_is_zero_without_logprobs_or_when_failed() -> None:
    cands = [cand("1"), cand("1", [-0.5], error="boom"), cand("2", [])]
    assert await score(MeanLogprob(), cands) == [0.0, 0.0, 0.0]


async def test_mean_logprob_length_floor() -> None:
    cands = [cand("1", [-0.1]), cand("2", [-0.1, -0.1, -0.1])]
    values = await score(MeanLogprob(length_floor=2), cands)
    assert values == pytest.approx([0.0, math.exp(-0.1)])


def test_mean_logprob_needs_logprobs() -> None:
    assert MeanLogprob.candidate_needs.logprobs
    assert not MajorityVote.candidate_needs.logprobs and not ReferenceMatch.candidate_needs.logprobs


def test_mean_logprob_config_validation() -> None:
    with pytest.raises(ConfigError) as info:
        MeanLogprob(length_floor=0)
    msg = str(info.value)
    assert "verifier 'mean_logprob'" in msg and "length_floor" in msg and "got 0" in msg
    with pytest.raises(ConfigError, match=r"bogus.*Known fields: length_floor"):
        MeanLogprob(bogus=1)


# --- contract ---------------------------------------------------------------------------------


async def test_wrong_number_of_scores_raises() -> None:
    with pytest.raises(
        RuntimeError, match=r"'_test_short_count' returned 1 scores for 2 candidates"
    ):
        await score(build_verifier("_test_short_count"), [cand("1"), cand("2")])


async def test_verifier_call_records_a_span() -> None:
    problem = Problem(question="q")
    ctx = make_ctx(problem)
    await MajorityVote()(problem, [cand("1"), cand("2"), cand("1")], ctx)
    (span,) = ctx.trace.root.children
    assert span.kind == "verifier" and span.name == "majority_vote"
    assert span.attrs["candidates"] == 3
    assert span.attrs["scores"] == [round(2 / 3, 4), round(1 / 3, 4), round(2 / 3, 4)]


async def test_verifier_span_records_errors() -> None:
    problem = Problem(question="q")
    ctx = make_ctx(problem)
    with pytest.raises(ConfigError):
        await ReferenceMatch()(problem, [cand("1")], ctx)
    assert "ConfigError" in (ctx.trace.root.children[0].error or "")


def test_build_verifier_from_name_spec_and_instance() -> None:
    assert isinstance(build_verifier("majority_vote"), MajorityVote)
    v = build_verifier({"verifier": "mean_logprob", "length_floor": 3})
    assert isinstance(v, MeanLogprob) and v.config.length_floor == 3
    assert build_verifier(v) is v
    with pytest.raises(ConfigError, match="'verifier' name field"):
        build_verifier({"length_floor": 3})
    with pytest.raises(RegistryError, match=r"unknown verifier 'nope'; known: .*majority_vote"):
        build_verifier("nope")


def test_describe() -> None:
    assert MajorityVote().describe() == {"verifier": "majority_vote"}
    assert MeanLogprob(length_floor=4).describe() == {"verifier": "mean_logprob", "length_floor": 4}
    assert MeanLogprob(MeanLogprob(length_floor=2).config).config.length_floor == 2
