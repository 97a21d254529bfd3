"""Tests for ``verified_resampling`` (Stroebl et al. 2024): the value model and the strategy."""

from __future__ import annotations

import math
from typing import Any

import pytest

import strategies.verified_resampling  # noqa: F401 - registers the strategy
from orchestrator.backends.base import Capabilities
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.registry import strategies as strategy_registry
from orchestrator.registry import verifiers as verifier_registry
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, Problem, Score
from strategies import build_strategy
from strategies.verified_resampling import (
    PAPER_TASK_TYPES,
    VerifiedResampling,
    accepts,
    limit_accuracy,
    optimal_k,
    value_of_k,
)
from verifiers import Verifier

QUESTION = "What is 6*7?"
# A prior where every extra attempt adds value, so K* = max_k (c=1, s=0.75, lambda=1, r=0.5:
# each attempt is worth 0.5 - 0.25*0.5 > 0, rejected with probability 0.375).
GAINFUL = {"strategy": "verified_resampling", "accuracy": 0.5, "max_k": 8}


@verifier_registry.register("_vr_only_42")
class Only42(Verifier):
    """Scores answer 42 at 1.0, 41 at 0.3 (below the 0.5 threshold), anything else 0."""

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: object
    ) -> list[Score]:
        table = {"42": 1.0, "41": 0.3}
        return [Score(value=table.get(c.answer or "", 0.0), verifier=self.name) for c in candidates]


def spec(**fields: Any) -> dict[str, Any]:
    return {**GAINFUL, "verifier": "_vr_only_42", **fields}


def direct_value(k: int, c: float, s: float, lam: float, types: Any) -> float:
    """R(K) by the paper's double sum, written independently of the module."""
    total = 0.0
    for step in range(1, k + 1):
        for r, pi in types:
            beta = (1 - c) * r + s * (1 - r)
            total += pi * beta ** (step - 1) * (c * r - lam * (1 - s) * (1 - r))
    return total


def strategy_spans(trace: dict[str, Any]) -> dict[str, Any]:
    (span,) = trace["children"]
    assert span["kind"] == "strategy" and span["name"] == "verified_resampling"
    return span


# --- the value model --------------------------------------------------------------------------


# The paper's example: easy r=0.87, hard r=0.13, priors 0.58 / 0.42, c=1, s=0.75.
# With c=1, beta_t = 0.75*(1 - r_t): beta_easy = 0.0975, beta_hard = 0.6525, and the k-th
# attempt adds 0.58*0.0975^(k-1)*g_easy + 0.42*0.6525^(k-1)*g_hard, with
# g_easy = 0.87 - 0.0325*lambda > 0 and g_hard = 0.13 - 0.2175*lambda < 0 for lambda >= 0.6.
# lambda=0.7: g = (0.84725, -0.02225); increments 0.48206, 0.04181, 0.00069, then -0.00214
#             (the hard term decays slower, so every later increment is negative): K* = 3.
# lambda=1:   g = (0.8375, -0.0875); increments 0.449, 0.02338, then -0.01103: K* = 2.
# lambda=2:   g = (0.805, -0.305); increments 0.33880, then -0.03806: K* = 1.
@pytest.mark.parametrize(("lam", "expected_k"), [(0.7, 3), (1.0, 2), (2.0, 1)])
def test_paper_example_optimal_k(lam: float, expected_k: int) -> None:
    types = [(0.87, 0.58), (0.13, 0.42)]
    assert list(PAPER_TASK_TYPES) == types
    k, value, table = optimal_k(1.0, 0.75, lam, types, max_k=64)
    direct = [direct_value(i, 1.0, 0.75, lam, types) for i in range(1, 65)]
    assert table == pytest.approx(direct, abs=1e-12)
    assert max(range(64), key=lambda i: direct[i]) + 1 == expected_k
    assert k == expected_k
    assert value == pytest.approx(direct[expected_k - 1], abs=1e-12)
    for i in (1, 2, 5, 20):
        assert value_of_k(i, 1.0, 0.75, lam, types) == pytest.approx(direct[i - 1], abs=1e-12)


def test_paper_example_values_by_hand() -> None:
    types = [(0.87, 0.58), (0.13, 0.42)]
    assert value_of_k(1, 1.0, 0.75, 1.0, types) == pytest.approx(0.58 * 0.8375 - 0.42 * 0.0875)
    r2 = 0.449 + 0.58 * 0.0975 * 0.8375 - 0.42 * 0.6525 * 0.0875
    assert value_of_k(2, 1.0, 0.75, 1.0, types) == pytest.approx(r2)
    assert value_of_k(0, 1.0, 0.75, 1.0, types) == 0.0


def test_perfect_soundness_keeps_adding_value() -> None:
    # s=1, c=1, r=0.5: R(K) = 1 - 0.5^K, increasing: K* = max_k.
    k, value, table = optimal_k(1.0, 1.0, 5.0, [(0.5, 1.0)], max_k=8)
    assert k == 8 and value == pytest.approx(1 - 0.5**8)
    assert table == pytest.approx([1 - 0.5**i for i in range(1, 9)])


def test_ties_go_to_the_smaller_k() -> None:
    # r=1, c=1: the first attempt is always accepted; later ones add exactly 0.
    assert optimal_k(1.0, 0.75, 1.0, [(1.0, 1.0)], max_k=10)[:2] == (1, 1.0)
    # r=0, s=1: every value is 0 (the strategy abstains on max R <= 0).
    assert optimal_k(1.0, 1.0, 1.0, [(0.0, 1.0)], max_k=5) == (1, 0.0, [0.0] * 5)


def test_huge_wrong_answer_cost_makes_every_k_negative() -> None:
    k, value, table = optimal_k(1.0, 0.75, 100.0, list(PAPER_TASK_TYPES), max_k=64)
    assert value < 0 and max(table) == value and k == 1


def test_limit_accuracy() -> None:
    assert limit_accuracy(1.0, 0.75, 0.5) == pytest.approx(0.5 / 0.625)  # 0.8
    assert limit_accuracy(0.9, 0.9, 0.2) == pytest.approx(0.18 / 0.26)
    assert limit_accuracy(1.0, 1.0, 0.1) == 1.0  # a sound verifier never accepts a wrong one
    assert limit_accuracy(0.0, 0.5, 0.5) == 0.0  # never accepts a correct one
    assert limit_accuracy(0.0, 1.0, 0.3) == 0.0  # accepts nothing at all
    # the limit is the K -> infinity value of the accuracy part of R (lambda = 0)
    assert value_of_k(500, 0.9, 0.9, 0.0, [(0.2, 1.0)]) == pytest.approx(0.18 / 0.26)


def test_accepts_needs_a_real_judgement() -> None:
    assert accepts(Score(value=0.5, verifier="v"), 0.5)
    assert not accepts(Score(value=0.49, verifier="v"), 0.5)
    assert accepts(Score(value=0.7, verifier="v", details={"fallback": False}), 0.5)
    for key in ("fallback", "budget_exhausted", "error"):
        assert not accepts(Score(value=0.9, verifier="v", details={key: True}), 0.5)


# --- config and plan --------------------------------------------------------------------------


def test_config_defaults_and_plan() -> None:
    strat = build_strategy("verified_resampling")
    assert isinstance(strat, VerifiedResampling)
    assert strategy_registry.get("verified_resampling") is VerifiedResampling
    cfg = strat.config
    assert (cfg.completeness, cfg.soundness, cfg.wrong_answer_cost) == (1.0, 0.75, 1.0)
    assert (cfg.accept_threshold, cfg.max_k, cfg.k, cfg.batch_size) == (0.5, 64, None, 1)
    assert cfg.on_exhausted == "abstain" and cfg.verifier == "self_eval"
    plan = strat.plan()
    assert plan.k == 2 and not plan.abstain  # the paper's example with lambda = 1
    assert list(plan.details["value_table"]) == [str(i) for i in range(1, 21)]
    expected = 0.58 * 0.87 / (0.87 + 0.25 * 0.13) + 0.42 * 0.13 / (0.13 + 0.25 * 0.87)
    assert plan.details["limit_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_task_types_are_normalised_and_k_overrides() -> None:
    strat = VerifiedResampling(
        task_types=[{"accuracy": 0.87, "weight": 58}, {"accuracy": 0.13, "weight": 42}],
        wrong_answer_cost=0.7,
        max_k=5,
    )
    plan = strat.plan()
    assert plan.k == 3 and plan.details["k_source"] == "optimal"
    assert plan.details["parameters"]["task_types"] == [
        {"accuracy": 0.87, "weight": 0.58},
        {"accuracy": 0.13, "weight": 0.42},
    ]
    assert list(plan.details["value_table"]) == ["1", "2", "3", "4", "5"]
    forced = VerifiedResampling(wrong_answer_cost=100.0, k=4).plan()
    assert forced.k == 4 and not forced.abstain and forced.details["k_source"] == "config"
    assert forced.value < 0 and forced.details["k_star"] == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"accuracy": 0.5, "task_types": [{"accuracy": 0.5, "weight": 1}]}, "not both"),
        ({"task_types": [{"accuracy": 0.5, "weight": 0}]}, "sum to more than 0"),
        ({"task_types": []}, "task_types"),
        ({"completeness": 1.5}, "completeness"),
        ({"task_types": [{"accuracy": 0.5, "weight": 1, "extra": 2}]}, "extra"),
        ({"on_exhausted": "guess"}, "on_exhausted"),
    ],
)
def test_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy({"strategy": "verified_resampling", **fields})


def test_describe_round_trips() -> None:
    strat = build_strategy(
        {
            "strategy": "verified_resampling",
            "verifier": "_vr_only_42",
            "task_types": [{"accuracy": 0.9, "weight": 1.0}],
            "k": 3,
        }
    )
    assert strat.describe()["task_types"] == [{"accuracy": 0.9, "weight": 1.0}]
    assert build_strategy(strat.describe()).describe() == strat.describe()


# --- behaviour on FakeBackend -----------------------------------------------------------------


async def test_stops_at_the_first_accepted_sample() -> None:
    backend = FakeBackend(answers=["7", "41", "42", "42"])
    result = await Orchestrator([backend]).run(QUESTION, spec())
    assert result.answer == "42" and result.candidate is not None
    assert backend.calls == 3 and all(r.n == 1 for r in backend.requests)
    d = result.details
    assert (d["k"], d["k_source"], d["accepted_at"], d["samples"]) == (8, "optimal", 3, 3)
    assert d["abstained"] is False and d["reason"] is None
    assert [sc.score for sc in result.candidates] == [0.0, 0.3, 1.0]
    assert result.usage.calls == 3 and not result.budget_exhausted
    span = strategy_spans(result.trace or {})
    assert span["attrs"]["k"] == 8 and span["attrs"]["value_table"] == d["value_table"]
    assert span["attrs"]["parameters"]["task_types"] == [{"accuracy": 0.5, "weight": 1.0}]
    attempts = span["children"]
    assert [a["name"] for a in attempts] == ["attempt"] * 3
    assert [a["attrs"]["accepted"] for a in attempts] == [False, False, True]
    assert [c["kind"] for c in attempts[0]["children"]] == ["backend", "verifier"]


async def test_none_accepted_within_k_abstains() -> None:
    backend = FakeBackend(answers=["7", "41"])
    result = await Orchestrator([backend]).run(QUESTION, spec(k=3))
    assert backend.calls == 3
    assert result.answer is None and result.candidate is None
    assert len(result.candidates) == 3
    d = result.details
    assert d["abstained"] is True and d["reason"] == "none_accepted" and d["accepted_at"] is None


async def test_none_accepted_within_k_best_returns_the_best_scored() -> None:
    backend = FakeBackend(answers=["7", "41", "7"])
    result = await Orchestrator([backend]).run(QUESTION, spec(k=3, on_exhausted="best"))
    assert result.answer == "41"  # scored 0.3: the best, though under the threshold
    assert result.details["abstained"] is False and result.details["reason"] == "none_accepted"


async def test_abstains_without_any_backend_call() -> None:
    backend = FakeBackend(answers=["42"])
    result = await Orchestrator([backend]).run(
        QUESTION, spec(wrong_answer_cost=1000.0, soundness=0.5)
    )
    assert backend.calls == 0 and result.usage.calls == 0
    assert result.answer is None and result.candidates == []
    d = result.details
    assert d["abstained"] is True and d["reason"] == "no_positive_value" and d["samples"] == 0
    assert d["expected_value"] < 0 and all(v < 0 for v in d["value_table"].values())
    assert strategy_spans(result.trace or {}).get("children") is None


async def test_abstains_when_the_best_value_is_exactly_zero() -> None:
    backend = FakeBackend(answers=["42"])
    result = await Orchestrator([backend]).run(QUESTION, spec(accuracy=0.0, soundness=1.0))
    assert backend.calls == 0 and result.details["abstained"] is True
    assert result.details["expected_value"] == 0.0


async def test_batches_return_the_earliest_accepted() -> None:
    backend = FakeBackend(answers=["7", "42", "41", "42"])
    result = await Orchestrator([backend]).run(QUESTION, spec(batch_size=4))
    assert backend.calls == 1 and backend.requests[0].n == 4
    assert result.answer == "42" and result.details["accepted_at"] == 2
    assert result.details["samples"] == 4 and result.candidate == result.candidates[1].candidate


async def test_last_batch_is_cut_to_k() -> None:
    backend = FakeBackend(answers=["7"])
    await Orchestrator([backend]).run(QUESTION, spec(batch_size=3, k=5))
    assert [r.n for r in backend.requests] == [3, 2]


async def test_short_backend_is_topped_up() -> None:
    backend = FakeBackend(answers=["7", "7", "7", "42"], short_n=2)
    result = await Orchestrator([backend]).run(QUESTION, spec(batch_size=4))
    assert [r.n for r in backend.requests] == [4, 2]
    assert result.answer == "42" and result.details["accepted_at"] == 4


async def test_budget_exhaustion_by_calls() -> None:
    backend = FakeBackend(answers=["7"])
    result = await Orchestrator([backend]).run(QUESTION, spec(), Budget(max_calls=2))
    assert backend.calls == 2 and result.budget_exhausted
    assert result.answer is None and len(result.candidates) == 2
    assert result.details["reason"] == "budget_exhausted" and result.details["abstained"] is True
    best = await Orchestrator([FakeBackend(answers=["41", "7"])]).run(
        QUESTION, spec(on_exhausted="best"), Budget(max_calls=2)
    )
    assert best.answer == "41" and best.budget_exhausted


async def test_budget_exhaustion_by_tokens() -> None:
    backend = FakeBackend(answers=["7"])  # 16 words = 16 tokens a sample
    result = await Orchestrator([backend]).run(QUESTION, spec(), Budget(max_completion_tokens=40))
    assert result.budget_exhausted and result.usage.completion_tokens <= 40
    assert backend.calls == 3 and result.details["reason"] == "budget_exhausted"
    assert result.candidates[-1].candidate.finish_reason == "length"


async def test_accepted_sample_after_budget_refusal_of_later_calls() -> None:
    backend = FakeBackend(answers=["7", "42"])
    result = await Orchestrator([backend]).run(QUESTION, spec(), Budget(max_calls=2))
    assert result.answer == "42" and result.details["accepted_at"] == 2


async def test_failed_samples_are_skipped() -> None:
    backend = FakeBackend(answers=["42"], fail_calls=[0])
    result = await Orchestrator([backend]).run(QUESTION, spec())
    assert backend.calls == 2 and result.answer == "42"
    assert "injected failure" in result.details["error"]


async def test_two_backend_errors_in_a_row_stop() -> None:
    backend = FakeBackend(answers=["42"], fail_calls=[0, 1])
    result = await Orchestrator([backend]).run(QUESTION, spec())
    assert backend.calls == 2 and result.answer is None
    assert result.details["samples"] == 0 and "injected failure" in result.details["error"]


async def test_default_self_eval_verifier_probes_and_accepts() -> None:
    # FakeBackend's probe token puts P(Yes) = e^-1 and P(No) = e^-2 among the top logprobs:
    # score = 1 / (1 + e^-1) > 0.5, so the first sample is accepted (K* = 2 by default).
    backend = FakeBackend(answers=["42"])
    result = await Orchestrator([backend]).run(QUESTION, "verified_resampling")
    assert result.answer == "42" and result.details["k"] == 2
    assert result.details["accepted_at"] == 1
    assert backend.calls == 2  # one sample, one probe
    probe = backend.requests[1]
    assert probe.max_tokens == 1 and probe.logprobs and probe.top_logprobs == 20
    assert result.candidates[0].score == pytest.approx(1 / (1 + math.exp(-1)))


async def test_capability_refusal_names_the_capability() -> None:
    backend = FakeBackend(capabilities=Capabilities())
    with pytest.raises(CapabilityError, match="logprobs"):
        await Orchestrator([backend]).run(QUESTION, "verified_resampling")
    assert backend.calls == 0
    with pytest.raises(CapabilityError, match=r"'verified_resampling'.*logprobs"):
        await Orchestrator([backend]).run(QUESTION, spec(verifier="mean_logprob"))
    assert backend.calls == 0


async def test_reference_match_verifier() -> None:
    backend = FakeBackend(answers=["41", "42.0"])
    problem = Problem(question=QUESTION, reference="42")
    result = await Orchestrator([backend]).run(problem, spec(verifier="reference_match"))
    assert result.answer == "42.0" and backend.calls == 2


async def test_inner_strategy_runs_are_the_attempts() -> None:
    backend = FakeBackend(answers=["7", "42"])
    strat = build_strategy(spec(inner={"strategy": "single"}, batch_size=2))
    assert [c.name for c in strat.children()] == ["single"]
    result = await Orchestrator([backend]).run(QUESTION, strat)
    assert backend.calls == 2 and result.answer == "42"
    assert result.details["accepted_at"] == 2
    span = strategy_spans(result.trace or {})
    assert [c["name"] for c in span["children"][0]["children"]] == [
        "single",
        "single",
        "_vr_only_42",
    ]


async def test_concurrent_runs_share_one_instance() -> None:
    import asyncio

    strat = build_strategy(spec())
    backends = [FakeBackend(answers=["7"] * i + ["42"]) for i in range(3)]
    results = await asyncio.gather(*(Orchestrator([b]).run(QUESTION, strat) for b in backends))
    assert [r.details["accepted_at"] for r in results] == [1, 2, 3]
