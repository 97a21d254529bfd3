"""Tests for the combinators: ``weighted_sum``, ``all_of`` and ``first_success``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import Field

from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import BudgetExhausted, ConfigError, RegistryError
from orchestrator.registry import verifiers as registry
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Score
from verifiers import Verifier, VerifierConfig, build_verifier
from verifiers.combinators import AllOf, FirstSuccess, WeightedSum, merge_needs

PROBLEM = Problem(question="q")

# --- test children ----------------------------------------------------------------------------


class LookupConfig(VerifierConfig):
    scores: dict[str, float] = Field(default_factory=dict)
    delay: float = 0.0


@registry.register("_test_lookup")
class Lookup(Verifier):
    """Scores a candidate by looking its text up in ``scores`` (0 when absent)."""

    Config = LookupConfig

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        if self.config.delay:
            await asyncio.sleep(self.config.delay)
        return [
            Score(value=self.config.scores.get(c.text, 0.0), verifier=self.name) for c in candidates
        ]


@registry.register("_test_model")
class ModelCalling(Verifier):
    """One backend call per candidate; scores 0.5."""

    candidate_needs = Capabilities(logprobs=True, top_logprobs=5)

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        for c in candidates:
            await ctx.generate(GenerationRequest(prompt=c.text, max_tokens=4))
        return [Score(value=0.5, verifier=self.name) for _ in candidates]


@registry.register("_test_boom")
class Boom(Verifier):
    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        raise ConfigError("boom: misconfigured child")


def lookup(delay: float = 0.0, **scores: float) -> dict[str, Any]:
    return {"verifier": "_test_lookup", "scores": scores, "delay": delay}


def make_ctx(budget: Budget | None = None) -> tuple[RunContext, FakeBackend]:
    backend = FakeBackend()
    return RunContext(PROBLEM, {"fake": backend}, "fake", BudgetMeter(budget), Trace()), backend


CANDS = [Candidate(text=t) for t in ("a", "b", "c")]


async def score(verifier: Verifier, cands: list[Candidate] = CANDS) -> list[Score]:
    ctx, _ = make_ctx()
    scores = await verifier(PROBLEM, cands, ctx)
    assert all(s.verifier == verifier.name for s in scores)
    return scores


def values(scores: list[Score]) -> list[float]:
    return [round(s.value, 6) for s in scores]


# --- weighted_sum -----------------------------------------------------------------------------


async def test_weighted_sum_is_the_weighted_mean() -> None:
    verifier = WeightedSum(
        verifiers=[
            {"verifier": lookup(a=1.0, b=0.5), "weight": 3},
            {"verifier": lookup(a=0.0, c=1.0)},
        ]
    )
    scores = await score(verifier)
    assert values(scores) == [0.75, 0.375, 0.25]
    assert scores[1].details == {"scores": [0.5, 0.0]}


async def test_weighted_sum_skips_zero_weight_children() -> None:
    verifier = WeightedSum(
        verifiers=[{"verifier": "_test_model", "weight": 0}, {"verifier": lookup(a=1.0)}]
    )
    ctx, backend = make_ctx()
    scores = await verifier(PROBLEM, CANDS, ctx)
    assert values(scores) == [1.0, 0.0, 0.0] and scores[0].details == {"scores": [None, 1.0]}
    assert backend.calls == 0 and verifier.candidate_needs == Capabilities()
    (span,) = ctx.trace.root.children
    assert [c.name for c in span.children] == ["_test_lookup"]


async def test_children_run_concurrently_with_spans_nested() -> None:
    verifier = WeightedSum(
        verifiers=[{"verifier": lookup(0.2, a=1.0)}, {"verifier": lookup(0.2, b=1.0)}]
    )
    ctx, _ = make_ctx()
    started = time.perf_counter()
    await verifier(PROBLEM, CANDS, ctx)
    assert time.perf_counter() - started < 0.35
    (span,) = ctx.trace.root.children
    assert span.name == "weighted_sum" and span.kind == "verifier"
    assert [(c.name, c.kind, c.attrs["candidates"]) for c in span.children] == [
        ("_test_lookup", "verifier", 3),
        ("_test_lookup", "verifier", 3),
    ]


@pytest.mark.parametrize(
    ("children", "message"),
    [
        ([{"verifier": "majority_vote", "weight": -1}], r"weight: .*greater than or equal to 0"),
        ([{"verifier": "majority_vote", "weight": 0}], r"at least one weight must be > 0"),
        ([], r"verifiers: List should have at least 1 item"),
        (["majority_vote"], r"verifiers\.0: Input should be a valid dictionary"),
        ([{"verifier": {"verifier": "format"}}], r"verifiers\[0\]: .*exactly one of `regex`"),
    ],
)
def test_weighted_sum_config_errors(children: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WeightedSum(verifiers=children)


def test_unknown_child_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="unknown verifier 'nope'"):
        AllOf(verifiers=["majority_vote", "nope"])


# --- all_of -----------------------------------------------------------------------------------


async def test_all_of_is_the_minimum() -> None:
    verifier = AllOf(verifiers=[lookup(a=0.9, b=0.4, c=1.0), lookup(a=0.7, b=1.0, c=1.0)])
    scores = await score(verifier)
    assert values(scores) == [0.7, 0.4, 1.0]
    assert scores[0].details == {"scores": [0.9, 0.7]}


async def test_all_of_with_threshold_is_zero_or_one() -> None:
    verifier = AllOf(
        verifiers=[lookup(a=0.9, b=0.4, c=1.0), lookup(a=0.7, b=1.0, c=0.1)], threshold=0.5
    )
    scores = await score(verifier)
    assert values(scores) == [1.0, 0.0, 0.0]
    assert scores[1].details["failed"] == [0] and scores[2].details["failed"] == [1]
    assert "failed" not in scores[0].details


# --- first_success ----------------------------------------------------------------------------


async def test_first_success_tiers_with_tie_break() -> None:
    # "unit tests, then a judge as tie-break": passing candidates rank by the judge, above all
    # failing ones, which rank by their test score; the judge sees only the passing ones.
    tests = lookup(a=1.0, b=0.8, c=1.0, d=0.2)
    judge = lookup(a=0.3, b=0.99, c=0.9, d=0.99)
    verifier = FirstSuccess(verifiers=[tests, judge])
    cands = [Candidate(text=t) for t in "abcd"]
    ctx, _ = make_ctx()
    scores = await verifier(PROBLEM, cands, ctx)
    assert values(scores) == [0.65, 0.4, 0.95, 0.1]
    assert [s.details["passed"] for s in scores] == [1, 0, 1, 0]
    assert scores[1].details["scores"] == [0.8, None]
    assert scores[2].details["scores"] == [1.0, 0.9]
    judge_span = ctx.trace.root.children[0].children[1]
    assert judge_span.attrs["candidates"] == 2  # only a and c reached the judge


async def test_first_success_passing_the_last_child_counts() -> None:
    verifier = FirstSuccess(verifiers=[lookup(a=1.0, b=1.0), lookup(a=1.0, b=0.5)])
    scores = await score(verifier, [Candidate(text="a"), Candidate(text="b")])
    assert values(scores) == [1.0, 0.75] and [s.details["passed"] for s in scores] == [2, 1]


async def test_first_success_calls_later_children_only_for_survivors() -> None:
    verifier = FirstSuccess(verifiers=[lookup(b=1.0), "_test_model"])
    ctx, backend = make_ctx()
    scores = await verifier(PROBLEM, CANDS, ctx)
    assert backend.calls == 1 and ctx.meter.usage.calls == 1
    assert values(scores) == [0.0, 0.75, 0.0]
    none_pass = FirstSuccess(verifiers=[lookup(), "_test_model"])
    ctx, backend = make_ctx()
    await none_pass(PROBLEM, CANDS, ctx)
    assert backend.calls == 0 and len(ctx.trace.root.children[0].children) == 1


async def test_first_success_threshold_and_clamping() -> None:
    verifier = FirstSuccess(verifiers=[lookup(a=0.6, b=0.4, c=-3.0), lookup(a=7.0)], threshold=0.5)
    scores = await score(verifier)
    assert values(scores) == [1.0, 0.2, 0.0]
    assert scores[0].details["scores"] == [0.6, 7.0]


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_first_success_threshold_range(threshold: float) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        FirstSuccess(verifiers=["majority_vote"], threshold=threshold)


# --- common behaviour -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["weighted_sum", "all_of", "first_success"])
async def test_empty_list_calls_no_child(name: str) -> None:
    children: list[Any] = ["_test_model"]
    if name == "weighted_sum":
        children = [{"verifier": "_test_model"}]
    verifier = build_verifier({"verifier": name, "verifiers": children})
    ctx, backend = make_ctx()
    assert await verifier(PROBLEM, [], ctx) == []
    assert backend.calls == 0


async def test_child_errors_propagate_unwrapped() -> None:
    verifier = AllOf(verifiers=[lookup(0.1), "_test_boom"])
    with pytest.raises(ConfigError, match="boom: misconfigured child"):
        await score(verifier)
    budgeted = WeightedSum(verifiers=[{"verifier": "_test_model"}, {"verifier": lookup()}])
    ctx, _ = make_ctx(Budget(max_calls=1))
    with pytest.raises(BudgetExhausted):
        await budgeted(PROBLEM, CANDS, ctx)


def test_needs_are_the_union_of_the_children() -> None:
    verifier = AllOf(verifiers=["majority_vote", "_test_model", "mean_logprob"])
    assert verifier.candidate_needs == Capabilities(logprobs=True, top_logprobs=5)
    assert AllOf.candidate_needs == Capabilities()  # the class default is untouched
    assert AllOf(verifiers=["majority_vote"]).candidate_needs == Capabilities()
    merged = merge_needs(
        [Capabilities(top_logprobs=3, native_n=True), Capabilities(prefix_continuation=True)]
    )
    assert merged == Capabilities(top_logprobs=3, native_n=True, prefix_continuation=True)


async def test_nesting_and_describe_round_trip() -> None:
    spec = {
        "verifier": "weighted_sum",
        "verifiers": [
            {"verifier": {"verifier": "all_of", "verifiers": [lookup(a=1.0), lookup(a=0.5)]}},
            {"verifier": lookup(b=1.0), "weight": 0.5},
        ],
    }
    verifier = build_verifier(spec)
    assert verifier.describe() == build_verifier(verifier.describe()).describe()
    assert verifier.describe()["verifiers"][1] == {"verifier": lookup(b=1.0), "weight": 0.5}
    assert values(await score(verifier)) == [round(0.5 / 1.5, 6), round(0.5 / 1.5, 6), 0.0]
