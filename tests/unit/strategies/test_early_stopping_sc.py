"""Tests for ``early_stopping_sc`` (Adaptive-Consistency's Beta stopping rule)."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from math import comb
from typing import Any

import pytest

import strategies.early_stopping_sc  # noqa: F401 - registers the strategy
from orchestrator.backends.base import Capabilities, Generation, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Result
from strategies import build_strategy
from strategies.early_stopping_sc import (
    EarlyStoppingSC,
    batch_sizes,
    prob_lead_beats_second,
    top_two,
)

QUESTION = "What is 6*7?"
ESC = "early_stopping_sc"


def binomial_tail(a: int, b: int) -> float:
    """P(X > 1/2) for X ~ Beta(a+1, b+1), by the Beta-binomial identity.

    P(X <= 1/2) = P(Bin(a+b+1, 1/2) >= a+1), so P(X > 1/2) = sum_{k<=a} C(a+b+1, k) / 2^(a+b+1).
    """
    m = a + b + 1
    return float(Fraction(sum(comb(m, k) for k in range(a + 1)), 2**m))


def spans(node: dict[str, Any], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    own = [node] if node["kind"] == kind and (name is None or node["name"] == name) else []
    return own + [s for child in node.get("children", []) for s in spans(child, kind, name)]


def batch_spans(result: Result) -> list[dict[str, Any]]:
    assert result.trace is not None
    return spans(result.trace, "step", "batch")


# --- pure math ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (0, 0, 0.5),
        (1, 0, 0.75),
        (3, 0, 1 - 0.5**4),
        (4, 0, 0.96875),
        (2, 2, 0.5),
    ],
)
def test_prob_lead_beats_second_closed_forms(a: int, b: int, expected: float) -> None:
    assert prob_lead_beats_second(a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("a", "b"), [(5, 1), (6, 1), (7, 2), (10, 4), (12, 9), (20, 3)])
def test_prob_lead_beats_second_matches_binomial_sums(a: int, b: int) -> None:
    assert prob_lead_beats_second(a, b) == pytest.approx(binomial_tail(a, b), abs=1e-12)


def test_stopping_rule_at_known_counts() -> None:
    assert binomial_tail(5, 1) == 0.9375 and binomial_tail(6, 1) == 1 - 9 / 256
    assert prob_lead_beats_second(3, 0) < 0.95 <= prob_lead_beats_second(4, 0)
    assert prob_lead_beats_second(5, 1) < 0.95 <= prob_lead_beats_second(6, 1)
    assert prob_lead_beats_second(1, 3) == pytest.approx(1 - prob_lead_beats_second(3, 1))
    with pytest.raises(ValueError, match="counts must be >= 0"):
        prob_lead_beats_second(-1, 0)


def test_top_two_and_batch_sizes() -> None:
    assert top_two([]) == (0.0, 0.0)
    assert top_two([3.0]) == (3.0, 0.0)
    assert top_two([1.0, 5.0, 2.0]) == (5.0, 2.0)
    assert batch_sizes(40, 4) == [4] * 10
    assert batch_sizes(10, 4) == [4, 4, 2]
    assert batch_sizes(3, 8) == [3]


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_errors() -> None:
    cfg = EarlyStoppingSC().config
    assert (cfg.n_max, cfg.batch_size, cfg.threshold, cfg.parallel_batches) == (40, 4, 0.95, 1)
    assert cfg.inner is None and cfg.temperature == 0.7
    with pytest.raises(ConfigError, match=r"threshold.*\(got 0.5\)"):
        build_strategy({"strategy": ESC, "threshold": 0.5})
    with pytest.raises(ConfigError, match=r"batch_size.*\(got 0\)"):
        build_strategy({"strategy": ESC, "batch_size": 0})
    with pytest.raises(ConfigError, match="n: Extra inputs"):
        build_strategy({"strategy": ESC, "n": 8})
    spec = {"strategy": ESC, "n_max": 12, "inner": {"strategy": "single"}}
    strat = build_strategy(spec)
    assert strat.describe() == spec and [c.name for c in strat.children()] == ["single"]


# --- behaviour on FakeBackend -----------------------------------------------------------------


async def test_stops_after_the_first_batch_when_all_agree() -> None:
    backend = FakeBackend(answers=["42"])
    result = await Orchestrator([backend]).run(QUESTION, ESC)
    assert result.answer == "42" and result.strategy == ESC
    assert backend.calls == 1 and backend.requests[0].n == 4
    d = result.details
    assert d["samples_used"] == 4 and d["batches"] == 1 and d["stopped_early"] is True
    assert d["posterior"] == 0.96875 and d["votes"] == {"42": 4.0} and d["confidence"] == 1.0
    assert d["failed"] == 0 and d["cancelled_batches"] == 0
    (batch,) = batch_spans(result)
    assert batch["attrs"]["size"] == 4 and batch["attrs"]["decided"] is True
    assert [s["kind"] for s in batch["children"]] == ["backend"]  # the call nests in its batch
    assert result.usage.calls == 1 and not result.budget_exhausted


async def test_goes_to_n_max_on_a_split_vote() -> None:
    backend = FakeBackend(answers=["1", "2"])
    spec = {"strategy": ESC, "n_max": 10}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert [r.n for r in backend.requests] == [4, 4, 2]
    d = result.details
    assert d["samples_used"] == 10 and d["batches"] == 3 and d["stopped_early"] is False
    assert d["votes"] == {"1": 5.0, "2": 5.0} and d["posterior"] == 0.5
    assert result.answer == "1"  # a tie goes to the answer seen first
    posteriors = [s["attrs"]["posterior"] for s in batch_spans(result)]
    assert posteriors == [0.5, 0.5, 0.5]


async def test_stops_once_the_leader_is_decisive() -> None:
    # per batch of 4: 3 x "7", 1 x "8"; after 8 votes a=6, b=2 -> P = 0.9102 < 0.95;
    # after 12 votes a=9, b=3 -> P = 0.9539 >= 0.95.
    backend = FakeBackend(answers=["7", "7", "8", "7"])
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": ESC})
    d = result.details
    assert result.answer == "7" and d["samples_used"] == 12 and d["stopped_early"] is True
    assert d["posterior"] == round(binomial_tail(9, 3), 6)
    assert [s["attrs"]["posterior"] for s in batch_spans(result)] == [
        round(binomial_tail(a, b), 6) for a, b in [(3, 1), (6, 2), (9, 3)]
    ]
    assert [s["attrs"]["decided"] for s in batch_spans(result)] == [False, False, True]
    assert d["confidence"] == 0.75


async def test_rule_fired_on_the_last_batch_is_not_an_early_stop() -> None:
    result = await Orchestrator([FakeBackend(answers=["42"])]).run(
        QUESTION, {"strategy": ESC, "n_max": 4}
    )
    assert result.details["samples_used"] == 4 and result.details["stopped_early"] is False


class Delayed(FakeBackend):
    """Call i sleeps ``delays[i]`` seconds (the last one for later calls); counts finished calls."""

    def __init__(self, delays: list[float], **kw: Any) -> None:
        super().__init__(**kw)
        self.delays = delays
        self.started = 0
        self.finished = 0

    async def generate(self, request: GenerationRequest) -> Generation:
        index = self.started
        self.started += 1
        await asyncio.sleep(self.delays[min(index, len(self.delays) - 1)])
        gen = await super().generate(request)
        self.finished += 1
        return gen


async def test_in_flight_batches_are_cancelled_once_decided() -> None:
    backend = Delayed([0.01, 5.0], answers=["42"])
    spec = {"strategy": ESC, "parallel_batches": 3}
    t0 = time.perf_counter()
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_completion_tokens=10_000))
    assert time.perf_counter() - t0 < 2.0  # did not wait for the slow calls
    assert backend.started == 3 and backend.finished == 1
    d = result.details
    assert result.answer == "42" and d["stopped_early"] is True
    assert d["samples_used"] == 4 and d["batches"] == 1 and d["cancelled_batches"] == 2
    assert d["discarded_batches"] == 0
    first, *rest = batch_spans(result)
    assert first["attrs"]["decided"] is True and "error" not in first
    assert len(rest) == 2 and all(s["attrs"]["cancelled"] is True for s in rest)
    assert all("CancelledError" in s["error"] for s in rest)
    # only the finished call was charged; the cancelled calls' reservations were released
    assert result.usage.calls == 1
    assert result.usage.completion_tokens == sum(c.candidate.tokens for c in result.candidates)
    assert not result.budget_exhausted


async def test_a_later_batch_finishing_first_waits_for_the_earlier_one() -> None:
    backend = Delayed([0.2, 0.01], answers=["42"])
    spec = {"strategy": ESC, "parallel_batches": 2}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert backend.finished == 2
    d = result.details
    assert d["batches"] == 1 and d["samples_used"] == 4 and d["stopped_early"] is True
    assert d["cancelled_batches"] == 0 and d["discarded_batches"] == 1
    assert [s["attrs"]["index"] for s in batch_spans(result)] == [0, 1]
    assert result.usage.calls == 2  # the discarded batch was paid for


async def test_parallel_batches_count_in_start_order() -> None:
    backend = FakeBackend(answers=["1", "2"], latency=0.01)
    spec = {"strategy": ESC, "n_max": 12, "parallel_batches": 2}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert [s["attrs"]["index"] for s in batch_spans(result)] == [0, 1, 2]
    assert result.details["samples_used"] == 12 and result.details["cancelled_batches"] == 0


async def test_budget_exhaustion_returns_the_current_leader() -> None:
    backend = FakeBackend(answers=["1", "2", "1"])
    result = await Orchestrator([backend]).run(QUESTION, ESC, Budget(max_calls=2))
    assert result.budget_exhausted is True
    assert backend.calls == 2
    d = result.details
    assert d["samples_used"] == 8 and d["votes"] == {"1": 5.0, "2": 3.0}
    assert result.answer == "1" and d["stopped_early"] is False
    assert d["posterior"] == round(binomial_tail(5, 3), 6)
    last = batch_spans(result)[-1]
    assert last["attrs"]["budget_exhausted"] is True and last["attrs"]["returned"] == 0


async def test_completion_token_budget_narrows_and_stops() -> None:
    backend = FakeBackend(answers=["1", "2"])
    spec = {"strategy": ESC, "max_tokens": 64}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_completion_tokens=300))
    assert result.budget_exhausted is True
    assert result.answer in {"1", "2"} and result.candidate is not None
    assert result.usage.completion_tokens <= 300
    assert 1 <= result.details["samples_used"] < 40


async def test_failed_child_runs_are_skipped() -> None:
    backend = FakeBackend(answers=["42"], fail_calls={0, 1})
    spec = {"strategy": ESC, "inner": {"strategy": "single"}}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert all(r.n == 1 for r in backend.requests) and backend.calls == 8
    d = result.details
    # batch 1: 2 failed + 2 votes (P=0.875); batch 2: 6 votes (P=0.9922) -> stop
    assert d["samples_used"] == 8 and d["failed"] == 2 and d["batches"] == 2
    assert d["votes"] == {"42": 6.0} and d["posterior"] == round(1 - 0.5**7, 6)
    assert "injected failure" in d["error"]
    assert result.answer == "42" and result.candidate is not None and not result.candidate.failed
    assert batch_spans(result)[0]["attrs"]["failed"] == 2


async def test_a_failed_batch_call_is_not_fatal() -> None:
    backend = FakeBackend(answers=["42"], fail_calls={0})
    result = await Orchestrator([backend]).run(QUESTION, ESC)
    d = result.details
    assert result.answer == "42" and d["batches"] == 2 and d["samples_used"] == 4
    assert "injected failure" in d["error"] and d["stopped_early"] is True
    assert batch_spans(result)[0]["attrs"]["returned"] == 0


async def test_every_call_failing_gives_no_answer() -> None:
    backend = FakeBackend(fail_calls=range(100))
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": ESC, "n_max": 8})
    assert result.answer is None and result.candidate is None
    assert backend.calls == 2 and result.details["samples_used"] == 0
    assert result.details["votes"] == {} and "injected failure" in result.details["error"]


async def test_short_backend_is_topped_up_within_a_batch() -> None:
    backend = FakeBackend(answers=["42"], short_n=3)
    result = await Orchestrator([backend]).run(QUESTION, ESC)
    assert [r.n for r in backend.requests] == [4, 1]
    assert result.details["samples_used"] == 4 and result.details["stopped_early"] is True


async def test_deterministic_with_a_seeded_backend() -> None:
    async def once(parallel: int) -> Result:
        backend = FakeBackend(seed=11, answers={"1": 0.6, "2": 0.4}, latency=0.001)
        spec = {"strategy": ESC, "n_max": 24, "parallel_batches": parallel}
        return await Orchestrator([backend]).run(QUESTION, spec, seed=5)

    first, second = await once(1), await once(1)
    keys = ("samples_used", "votes", "posterior", "batches", "stopped_early")
    assert [first.details[k] for k in keys] == [second.details[k] for k in keys]
    assert first.answer == second.answer
    assert [c.candidate.text for c in first.candidates] == [
        c.candidate.text for c in second.candidates
    ]
    p1, p2 = await once(2), await once(2)
    assert [p1.details[k] for k in keys] == [p2.details[k] for k in keys]


async def test_needs_no_capability_but_checks_its_child() -> None:
    plain = FakeBackend(answers=["42"], capabilities=Capabilities())
    assert EarlyStoppingSC().backend_needs() == Capabilities()
    result = await Orchestrator([plain]).run(QUESTION, ESC)
    assert result.answer == "42"
    plain = FakeBackend(capabilities=Capabilities())
    spec = {"strategy": ESC, "inner": {"strategy": "best_of_n", "n": 2}}
    with pytest.raises(CapabilityError, match="logprobs") as info:
        await Orchestrator([plain]).run(QUESTION, spec)
    assert "'best_of_n'" in str(info.value)
    assert plain.calls == 0


async def test_nested_inside_another_strategy() -> None:
    backend = FakeBackend(answers=["3"])
    spec = {"strategy": "best_of_n", "n": 2, "verifier": "majority_vote", "inner": ESC}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert result.answer == "3"
    assert result.trace is not None
    nested = [s for s in spans(result.trace, "strategy") if s["name"] == ESC]
    assert len(nested) == 2 and all(s["attrs"]["samples_used"] == 4 for s in nested)


async def test_strategy_span_carries_the_details() -> None:
    result = await Orchestrator([FakeBackend(answers=["5"])]).run(QUESTION, ESC)
    assert result.trace is not None
    (span,) = result.trace["children"]
    assert span["name"] == ESC and span["kind"] == "strategy"
    for key in ("samples_used", "stopped_early", "posterior", "votes", "confidence"):
        assert span["attrs"][key] == result.details[key]
