"""Tests for orchestrator.budget: Budget limits and the BudgetMeter's admit / settle / release."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from orchestrator.backends.base import GenerationRequest, Pricing
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import BackendUnavailable, BudgetExhausted
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Message, Problem, Usage


def spend(completion: int = 0, prompt: int = 0, calls: int = 1, usd: float = 0.0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, calls=calls, cost_usd=usd)


# --- Budget -----------------------------------------------------------------------------------


def test_budget_defaults_are_unlimited() -> None:
    b = Budget()
    assert (b.max_completion_tokens, b.max_prompt_tokens, b.max_calls, b.max_usd) == (None,) * 4
    assert b.max_seconds is None


@pytest.mark.parametrize(
    "fields",
    [
        {"max_completion_tokens": 0},
        {"max_prompt_tokens": 0},
        {"max_calls": 0},
        {"max_usd": 0},
        {"max_seconds": -1},
        {"max_tokens": 5},  # unknown field
    ],
)
def test_budget_rejects_bad_limits(fields: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Budget(**fields)


def test_budget_is_frozen() -> None:
    b = Budget(max_calls=3)
    with pytest.raises(ValidationError):
        b.max_calls = 4  # type: ignore[misc]


# --- completion tokens ------------------------------------------------------------------------


def test_unlimited_meter_admits_as_asked() -> None:
    meter = BudgetMeter()
    adm = meter.admit(8, 512, 30)
    assert (adm.n, adm.max_tokens, adm.narrowed) == (8, 512, False)
    assert adm.reserved_tokens == 8 * 512
    meter.settle(adm, spend(completion=100, prompt=30))
    assert meter.usage.completion_tokens == 100
    assert not meter.exhausted and meter.exhausted_by is None


def test_admit_narrows_n_to_fit_completion_limit() -> None:
    meter = BudgetMeter(Budget(max_completion_tokens=1000))
    adm = meter.admit(16, 100)
    assert (adm.n, adm.max_tokens, adm.narrowed) == (10, 100, True)
    assert adm.reserved_tokens == 1000


def test_admit_narrows_max_tokens_for_a_single_sample() -> None:
    meter = BudgetMeter(Budget(max_completion_tokens=50))
    adm = meter.admit(4, 512)
    assert (adm.n, adm.max_tokens, adm.narrowed) == (1, 50, True)


def test_admit_does_not_mark_narrowing_when_request_fits() -> None:
    meter = BudgetMeter(Budget(max_completion_tokens=1000))
    adm = meter.admit(2, 500)
    assert (adm.n, adm.max_tokens, adm.narrowed) == (2, 500, False)


def test_reservations_of_inflight_calls_count_against_the_limit() -> None:
    meter = BudgetMeter(Budget(max_completion_tokens=300))
    a1 = meter.admit(2, 100)
    a2 = meter.admit(2, 100)
    assert (a2.n, a2.max_tokens) == (1, 100)
    with pytest.raises(BudgetExhausted) as info:
        meter.admit(1, 10)
    assert info.value.limit == "completion_tokens"
    meter.settle(a1, spend(completion=20))
    meter.settle(a2, spend(completion=30))
    a3 = meter.admit(5, 100)  # 250 left now that the real spend replaced the reservation
    assert (a3.n, a3.max_tokens) == (2, 100)


def test_completion_tokens_never_exceed_limit_worst_case() -> None:
    """Random request shapes, every call spending its full admitted worst case."""
    rng = random.Random(1)
    for limit in (1, 7, 64, 100, 999):
        meter = BudgetMeter(Budget(max_completion_tokens=limit))
        inflight = []
        for _ in range(200):
            try:
                adm = meter.admit(rng.randint(1, 16), rng.randint(1, 300))
            except BudgetExhausted as exc:
                assert exc.limit == "completion_tokens"
                break
            assert adm.n >= 1 and adm.max_tokens >= 1
            inflight.append(adm)
            if rng.random() < 0.5:
                done = inflight.pop(0)
                meter.settle(done, spend(completion=done.n * done.max_tokens))
        for adm in inflight:
            meter.settle(adm, spend(completion=adm.n * adm.max_tokens))
        assert meter.usage.completion_tokens <= limit
        assert meter.exhausted and meter.exhausted_by == "completion_tokens"


def test_exhausted_flag_set_on_refusal_only() -> None:
    meter = BudgetMeter(Budget(max_completion_tokens=10))
    adm = meter.admit(1, 10)
    assert not meter.exhausted
    meter.settle(adm, spend(completion=10))
    assert not meter.exhausted
    with pytest.raises(BudgetExhausted, match="completion_tokens"):
        meter.admit(1, 1)
    assert meter.exhausted and meter.exhausted_by == "completion_tokens"


def test_exhausted_by_keeps_the_first_limit_hit() -> None:
    meter = BudgetMeter(Budget(max_completion_tokens=10, max_calls=1))
    meter.settle(meter.admit(1, 10), spend(completion=10))
    with pytest.raises(BudgetExhausted) as first:
        meter.admit(1, 1)
    assert first.value.limit == "calls"  # calls are checked before tokens
    with pytest.raises(BudgetExhausted):
        meter.admit(1, 1)
    assert meter.exhausted_by == "calls"


# --- calls, prompt tokens, dollars -------------------------------------------------------------


def test_calls_limit_counts_inflight_calls() -> None:
    meter = BudgetMeter(Budget(max_calls=2))
    a1 = meter.admit(1, 10)
    meter.admit(1, 10)
    with pytest.raises(BudgetExhausted) as info:
        meter.admit(1, 10)
    assert info.value.limit == "calls"
    assert meter.exhausted_by == "calls"
    meter.release(a1)  # a failed call frees its slot
    meter.admit(1, 10)


def test_calls_limit_after_settled_calls() -> None:
    meter = BudgetMeter(Budget(max_calls=3))
    for _ in range(3):
        meter.settle(meter.admit(1, 10), spend(completion=1))
    assert meter.usage.calls == 3
    with pytest.raises(BudgetExhausted, match="calls"):
        meter.admit(1, 10)


def test_prompt_token_limit_overshoots_by_at_most_one_call() -> None:
    limit, per_call = 100, 30
    meter = BudgetMeter(Budget(max_prompt_tokens=limit))
    calls = 0
    with pytest.raises(BudgetExhausted) as info:
        while True:
            adm = meter.admit(1, 10, prompt_tokens=per_call)
            meter.settle(adm, spend(prompt=per_call, completion=1))
            calls += 1
    assert info.value.limit == "prompt_tokens"
    assert calls == 4  # 0, 30, 60, 90 < 100 admitted; 120 refused
    assert meter.usage.prompt_tokens < limit + per_call


def test_prompt_token_reservations_count_while_inflight() -> None:
    meter = BudgetMeter(Budget(max_prompt_tokens=50))
    meter.admit(1, 10, prompt_tokens=50)
    with pytest.raises(BudgetExhausted, match="prompt_tokens"):
        meter.admit(1, 10, prompt_tokens=1)


def test_usd_limit_overshoots_by_at_most_one_call() -> None:
    pricing = Pricing(prompt=1.0, completion=10.0)  # USD per million tokens
    per_call = pricing.cost(1000, 1000)  # 0.011
    meter = BudgetMeter(Budget(max_usd=0.05))
    calls = 0
    with pytest.raises(BudgetExhausted) as info:
        while True:
            adm = meter.admit(1, 1000, prompt_tokens=1000, pricing=pricing)
            assert adm.reserved_usd == pytest.approx(per_call)
            meter.settle(adm, spend(prompt=1000, completion=1000, usd=per_call))
            calls += 1
    assert info.value.limit == "usd"
    assert calls == 5
    assert meter.usage.cost_usd < 0.05 + per_call
    assert meter.exhausted_by == "usd"


def test_release_drops_the_whole_reservation() -> None:
    meter = BudgetMeter(
        Budget(max_completion_tokens=100, max_prompt_tokens=100, max_calls=1, max_usd=1.0)
    )
    adm = meter.admit(1, 100, prompt_tokens=100, pricing=Pricing(prompt=1e6))
    meter.release(adm)
    again = meter.admit(1, 100, prompt_tokens=100, pricing=Pricing(prompt=1e6))
    assert (again.n, again.max_tokens) == (1, 100)
    assert meter.usage == Usage()
    assert not meter.exhausted


def test_settle_accumulates_usage() -> None:
    meter = BudgetMeter()
    meter.settle(meter.admit(1, 5), spend(completion=3, prompt=7, usd=0.5))
    meter.settle(meter.admit(1, 5), spend(completion=4, prompt=1, calls=2, usd=0.25))
    assert meter.usage.completion_tokens == 7
    assert meter.usage.prompt_tokens == 8
    assert meter.usage.calls == 3
    assert meter.usage.cost_usd == pytest.approx(0.75)


# --- seconds ------------------------------------------------------------------------------------


def test_deadline_and_seconds_left() -> None:
    clock = [100.0]
    meter = BudgetMeter(Budget(max_seconds=5))
    meter._now = lambda: clock[0]
    meter.started = 100.0
    assert meter.deadline == 105.0
    assert meter.seconds_left() == 5.0
    clock[0] = 104.0
    assert meter.seconds_left() == pytest.approx(1.0)
    meter.admit(1, 1)
    clock[0] = 110.0
    assert meter.seconds_left() == 0.0
    with pytest.raises(BudgetExhausted) as info:
        meter.admit(1, 1)
    assert info.value.limit == "seconds"
    assert meter.exhausted_by == "seconds"


def test_no_deadline_without_seconds_limit() -> None:
    meter = BudgetMeter()
    assert meter.deadline is None and meter.seconds_left() is None


def _ctx(backend: FakeBackend, budget: Budget) -> RunContext:
    return RunContext(
        Problem(question="What is 6*7?"),
        {backend.name: backend},
        backend.name,
        BudgetMeter(budget),
        Trace(),
    )


def _request(n: int = 1) -> GenerationRequest:
    return GenerationRequest(messages=[Message(role="user", content="What is 6*7?")], n=n)


async def test_call_outlasting_the_deadline_becomes_budget_exhausted() -> None:
    backend = FakeBackend(latency=5.0)
    ctx = _ctx(backend, Budget(max_seconds=0.05, max_completion_tokens=10_000))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BudgetExhausted) as info:
        await ctx.generate(_request(4))
    assert loop.time() - t0 < 1.0  # cancelled at the deadline, not after the 5 s latency
    assert info.value.limit == "seconds"
    assert backend.calls == 1
    assert ctx.meter.usage == Usage()  # nothing charged
    assert ctx.meter.exhausted and ctx.meter.exhausted_by == "seconds"
    # the reservation was released, and the meter refuses further calls
    assert ctx.meter._inflight == 0 and ctx.meter._reserved_tokens == 0
    with pytest.raises(BudgetExhausted, match="seconds"):
        await ctx.generate(_request())
    assert backend.calls == 1
    span = ctx.trace.backend_spans()[0]
    assert span.error is not None and "BudgetExhausted" in span.error


async def test_call_within_the_deadline_is_charged() -> None:
    backend = FakeBackend(latency=0.001)
    ctx = _ctx(backend, Budget(max_seconds=5))
    cands = await ctx.generate(_request(2))
    assert len(cands) == 2
    assert ctx.meter.usage.calls == 1
    assert ctx.meter.usage.completion_tokens == sum(c.tokens for c in cands)
    assert not ctx.meter.exhausted


async def test_failed_call_releases_its_reservation() -> None:
    backend = FakeBackend(fail_calls=[0])
    ctx = _ctx(backend, Budget(max_completion_tokens=100, max_calls=1))
    with pytest.raises(BackendUnavailable):
        await ctx.generate(_request())
    assert ctx.meter.usage == Usage()
    assert ctx.meter._inflight == 0 and ctx.meter._reserved_tokens == 0
    # the calls and token limits are whole again: the next call is admitted unnarrowed
    cands = await ctx.generate(_request().model_copy(update={"max_tokens": 100}))
    assert len(cands) == 1
    assert ctx.trace.backend_spans()[-1].attrs.get("narrowed_by_budget") is None


async def test_cancelled_call_releases_its_reservation() -> None:
    backend = FakeBackend(latency=10.0)
    ctx = _ctx(backend, Budget(max_completion_tokens=1000))
    task = asyncio.create_task(ctx.generate(_request()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.meter._inflight == 0 and ctx.meter._reserved_tokens == 0
    assert ctx.meter.usage == Usage()
