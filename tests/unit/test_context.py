"""Tests for orchestrator.context.RunContext: the metered, traced path to a backend."""

from __future__ import annotations

import pytest

from orchestrator.backends.base import Backend, Capabilities, Generation, GenerationRequest, Pricing
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import RunContext, estimate_prompt_tokens
from orchestrator.errors import BudgetExhausted, RegistryError
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Message, Problem, Usage

QUESTION = "What is 6*7?"


def make_ctx(
    *backends: Backend,
    budget: Budget | None = None,
    seed: int | None = None,
    problem: Problem | None = None,
) -> RunContext:
    backends = backends or (FakeBackend(),)
    return RunContext(
        problem or Problem(question=QUESTION),
        {b.name: b for b in backends},
        backends[0].name,
        BudgetMeter(budget),
        Trace(),
        seed,
    )


def chat(n: int = 1, **kw: object) -> GenerationRequest:
    return GenerationRequest(messages=[Message(role="user", content=QUESTION)], n=n, **kw)


class CachedBackend(Backend):
    """Returns one fresh and one cached candidate per call."""

    kind = "test-cached"

    def __init__(self) -> None:
        super().__init__("cached", "m", Capabilities(), Pricing(prompt=1e6, completion=1e6))

    async def generate(self, request: GenerationRequest) -> Generation:
        cands = [
            Candidate(text="The answer is 1", tokens=4),
            Candidate(text="The answer is 2", tokens=6, cached=True),
        ]
        return Generation(candidates=cands, prompt_tokens=3, completion_tokens=10)


class RawTimeoutBackend(Backend):
    kind = "test-timeout"

    def __init__(self) -> None:
        super().__init__("raw-timeout", "m", Capabilities())

    async def generate(self, request: GenerationRequest) -> Generation:
        raise TimeoutError("backend's own timeout")


def test_estimate_prompt_tokens() -> None:
    raw = GenerationRequest(prompt="x" * 40)
    assert estimate_prompt_tokens(raw) == 11
    msgs = GenerationRequest(
        messages=[Message(role="system", content="s" * 12), Message(role="user", content="u" * 4)]
    )
    assert estimate_prompt_tokens(msgs) == (12 + 8 + 4 + 8) // 4 + 1


def test_backend_lookup() -> None:
    a, b = FakeBackend(name="a"), FakeBackend(name="b")
    ctx = make_ctx(a, b)
    assert ctx.backend() is a
    assert ctx.backend("b") is b
    with pytest.raises(RegistryError, match=r"unknown backend 'c'; configured: a, b"):
        ctx.backend("c")


async def test_generate_charges_traces_and_extracts() -> None:
    backend = FakeBackend(answers=["42", "41"], pricing=Pricing(prompt=2.0, completion=4.0))
    ctx = make_ctx(backend)
    cands = await ctx.generate(chat(2))
    assert [c.answer for c in cands] == ["42", "41"]
    assert ctx.seen == cands
    tokens = sum(c.tokens for c in cands)
    cost = (20 * 2.0 + tokens * 4.0) / 1e6
    assert ctx.meter.usage.prompt_tokens == 20
    assert ctx.meter.usage.completion_tokens == tokens
    assert ctx.meter.usage.calls == 1
    assert ctx.meter.usage.cost_usd == pytest.approx(cost)
    (span,) = ctx.trace.backend_spans()
    assert span.name == "fake"
    assert (span.prompt_tokens, span.completion_tokens) == (20, tokens)
    assert span.cost_usd == pytest.approx(cost)
    assert span.attrs["model"] == "fake-model"
    assert span.attrs["n"] == 2 and span.attrs["calls"] == 1 and span.attrs["returned"] == 2
    assert "narrowed_by_budget" not in span.attrs


async def test_generate_without_extraction() -> None:
    ctx = make_ctx()
    cands = await ctx.generate(chat(), extract=False)
    assert cands[0].answer is None
    assert ctx.seen == cands


async def test_generate_uses_the_problem_answer_format() -> None:
    backend = FakeBackend(script=lambda req, i: "The answer is (B)")
    ctx = make_ctx(backend, problem=Problem(question=QUESTION, answer_format="choice"))
    (cand,) = await ctx.generate(chat())
    assert cand.answer == "B"
    ctx = make_ctx(backend, problem=Problem(question=QUESTION, answer_format="number"))
    (cand,) = await ctx.generate(chat())
    assert cand.answer is None


async def test_generate_narrows_the_request_to_the_budget() -> None:
    backend = FakeBackend()
    ctx = make_ctx(backend, budget=Budget(max_completion_tokens=40))
    cands = await ctx.generate(chat(8, max_tokens=16))
    assert len(cands) == 2
    assert backend.requests[0].n == 2 and backend.requests[0].max_tokens == 16
    assert ctx.trace.backend_spans()[0].attrs["narrowed_by_budget"] is True
    cands = await ctx.generate(chat(8, max_tokens=16))
    assert backend.requests[1].n == 1 and backend.requests[1].max_tokens == 8
    assert cands[0].tokens <= 8 and cands[0].finish_reason == "length"
    with pytest.raises(BudgetExhausted):
        await ctx.generate(chat())
    assert ctx.meter.usage.completion_tokens <= 40
    assert backend.calls == 2


async def test_generate_seeds_requests_from_the_run_rng() -> None:
    b1, b2 = FakeBackend(), FakeBackend()
    c1, c2 = make_ctx(b1, seed=7), make_ctx(b2, seed=7)
    for ctx in (c1, c2):
        await ctx.generate(chat())
        await ctx.generate(chat())
    seeds = [r.seed for r in b1.requests]
    assert None not in seeds and seeds[0] != seeds[1]
    assert seeds == [r.seed for r in b2.requests]
    explicit = make_ctx(FakeBackend(), seed=7)
    await explicit.generate(chat(seed=123))
    assert explicit.backend().requests[0].seed == 123  # type: ignore[attr-defined]
    unseeded = make_ctx(FakeBackend())
    await unseeded.generate(chat())
    assert unseeded.backend().requests[0].seed is None  # type: ignore[attr-defined]


async def test_cached_completion_tokens_are_charged_and_reported_apart() -> None:
    ctx = make_ctx(CachedBackend())
    await ctx.generate(chat(2))
    assert ctx.meter.usage.completion_tokens == 10  # the budget sees cached samples too
    assert ctx.meter.usage.cached_tokens == 6
    assert ctx.meter.usage.cost_usd == pytest.approx(3 + 10)  # pricing uses all tokens
    assert ctx.trace.backend_spans()[0].completion_tokens == 10


async def test_backend_timeout_without_a_deadline_is_not_budget_exhaustion() -> None:
    ctx = make_ctx(RawTimeoutBackend())
    with pytest.raises(TimeoutError):
        await ctx.generate(chat())
    assert not ctx.meter.exhausted
    assert ctx.meter.usage == Usage()
    assert ctx.meter._inflight == 0


async def test_generate_on_named_backend() -> None:
    a, b = FakeBackend(name="a"), FakeBackend(name="b", answers=["9"])
    ctx = make_ctx(a, b)
    (cand,) = await ctx.generate(chat(), "b")
    assert cand.answer == "9" and cand.backend == "b"
    assert (a.calls, b.calls) == (0, 1)
    assert ctx.trace.backend_spans()[0].name == "b"
