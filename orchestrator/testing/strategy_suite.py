"""The strategy conformance suite: the contract every strategy must keep, as pytest tests.

Like ``verifier_suite.py`` (and Optuna's ``testing/pytest_samplers.py``): a test module subclasses
``StrategyConformance`` (the class name must start with ``Test``) and provides ``spec()``; the
suite's test methods then run that strategy through a real ``Orchestrator`` on ``FakeBackend``::

    from orchestrator.testing.strategy_suite import StrategyConformance

    class TestMyStrategy(StrategyConformance):
        def spec(self) -> StrategySpec:
            return {"strategy": "my_strategy", "n": 4, "max_tokens": 64}

Hooks (each called afresh per scenario, so state never leaks between runs):

- ``spec()``: the minimal spec to test (small ``n``, small ``max_tokens``).
- ``backends(**options)``: the run's backends, the first being the default. ``options`` are
  ``FakeBackend`` keyword arguments chosen by the test (``script``, ``seed``, ``latency``,
  ``fail_rate``, ``short_n``, ``capabilities``, ``pricing``); apply them to every backend.
  Default: one ``FakeBackend`` (full capabilities). Override for several named backends.
- ``make_script(wrong_rate=..., empty=...)``: the ``FakeBackend`` script. The default,
  ``ConformanceScript``, finds the problem tag (``Q<k>``) anywhere in the request and answers
  ``\\boxed{expected_answer(k)}`` with filler words that vary with the sample index and the
  request seed; it repeats the tag in its text, so prompts built from earlier outputs still
  name their problem. Override it for a strategy that needs another output format.
- ``problem(k)`` / ``expected_answer(k)``: the k-th conformance problem and its answer.

Class attributes: ``allowed_errors`` (exceptions a run may raise when every backend call fails;
default none: the run returns a Result), ``may_abstain`` (True for a strategy documented to
return no answer on purpose, e.g. when no sample was accepted before the budget ran out; it
lifts the best-so-far answer check) and ``scenario_timeout`` (seconds per run).

What the tests check, for every strategy:

1. Budget. ``budget.py`` guarantees that completion tokens never exceed
   ``max_completion_tokens`` and that calls, prompt tokens and dollars are checked against what
   is spent (and reserved) when a call is admitted. From the backend spans' times this gives the
   precise rule ``budget_violations`` checks: a call is admitted only while the spend of the calls
   settled before it stays below each limit, and, for ``max_calls``, settled calls plus calls in
   flight stay below it (the meter counts calls in flight); so calls, prompt tokens and dollars
   overshoot only by the calls in flight when the line was crossed. Every budget (fractions of
   an unlimited run's usage) yields a Result, never an exception; a ``max_calls`` below the
   unlimited run's calls, or ``max_completion_tokens=1``, yields ``budget_exhausted``; a
   strategy never lets ``BudgetExhausted`` escape once a live candidate has been sampled, and
   returns an answer when any complete sample had one (its best so far). A ``max_seconds``
   deadline ends the run (with a Result) within a fraction of a call's latency of it.
2. Cancellation. Cancelling the run while a backend call is in flight (the first call, and a
   call of a later wave) raises ``CancelledError`` well before the call would have ended, leaves
   no task running and closes every span.
3. Determinism. The same seeds give the same answer, candidate texts, usage and trace shape.
4. Concurrency. One instance runs 8 problems at once; each result answers its own problem, and a
   run leaves the instance's attributes unchanged (no per-run state on ``self``).
5. Trace. A root ``run`` span holds one strategy span named after the strategy; every backend
   span lies under it and every backend call has one; usage equals the sum over backend spans.
6. Failures. Every call failing gives answer None with an error (or ``budget_exhausted``); some
   calls failing gives the right answer or None; completions without an answer give None; a
   backend returning one candidate per call still gives the right answer, and one returning
   none gives None (without looping for ever); a backend without
   capabilities is refused before any call (``CapabilityError`` naming the capability), or is
   never asked for logprobs or prefix continuation.
7. Service contract. ``max_samples()`` is an int, and no run (plain, short ``n``, failing calls)
   draws more samples than it; every config field declares its trust class
   (``orchestrator.trust``).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import pytest

from orchestrator.backends.base import Backend, Capabilities, GenerationRequest, Pricing
from orchestrator.budget import Budget
from orchestrator.context import RunContext
from orchestrator.errors import BudgetExhausted, CapabilityError
from orchestrator.registry import strategies as strategy_registry
from orchestrator.registry import verifiers as verifier_registry
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend, Script
from orchestrator.trace import Span
from orchestrator.trust import unclassified
from orchestrator.types import Problem, Result, Usage
from strategies.base import Strategy, StrategySpec, build_strategy

__all__ = [
    "ConformanceScript",
    "Outcome",
    "StrategyConformance",
    "budget_violations",
    "expected_answer",
    "instrument",
    "problem_index",
]

T = TypeVar("T")

_TAG = re.compile(r"\bQ(\d+)\b")
_FILLER = ("first", "add", "the", "numbers", "then", "check", "carefully", "so", "we", "get")
#: How long the cancellation tests let a FakeBackend call last, and the most they wait after
#: cancelling (well under the latency: the run must not wait for the call to finish).
_LATENCY, _PROMPT = 0.5, 0.25
#: Every token and prompt token costs one dollar, so dollar budgets are easy to reason about.
_PRICING = Pricing(prompt=1e6, completion=1e6)


def expected_answer(k: int) -> str:
    """The answer of conformance problem ``k``."""
    return str(100 + 7 * k)


def problem_index(text: str) -> int:
    """The problem tag ``Q<k>`` first found in ``text`` (0 when there is none)."""
    m = _TAG.search(text)
    return int(m.group(1)) if m else 0


class ConformanceScript:
    """A ``FakeBackend`` script answering each conformance problem (see the module docstring).

    Args:
        wrong_rate: the chance that a sample answers a wrong (problem-independent) number.
        empty: give completions with no extractable answer at all.
    """

    def __init__(self, wrong_rate: float = 0.0, empty: bool = False) -> None:
        self.wrong_rate = wrong_rate
        self.empty = empty

    def __call__(self, request: GenerationRequest, index: int) -> str:
        text = request.prompt or "\n".join(m.content for m in request.messages or [])
        k = problem_index(text)
        rng = random.Random(f"{k}:{index}:{request.seed}:{len(text)}")
        filler = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 8)))
        if self.empty:
            return f"Problem Q{k}. I {filler}, but I cannot finish this one."
        wrong = rng.random() < self.wrong_rate
        answer = str(1000 + rng.randint(0, 2)) if wrong else expected_answer(k)
        return f"Problem Q{k}. I {filler}. The answer is \\boxed{{{answer}}}."


def budget_violations(spans: Sequence[Span], budget: Budget) -> list[str]:
    """Where the backend ``spans`` of one run broke ``budget`` (empty when they did not).

    ``RunContext.generate`` opens a backend span right after the meter admits the call and closes
    it right after settling (or releasing) it, with no suspension in between, so span times order
    admissions and settlements. The rule, from ``BudgetMeter.admit``: completion tokens never
    exceed their limit; each call is admitted only while the calls, prompt tokens, completion
    tokens and dollars of the calls settled before it stay below the limits, and, for calls,
    settled calls plus calls in flight stay below ``max_calls``. A span with an error released
    its reservation and spent nothing.
    """
    out: list[str] = []
    cap = budget.max_completion_tokens
    total = sum(s.completion_tokens for s in spans)
    if cap is not None and total > cap:
        out.append(f"{total} completion tokens spent, limit {cap}")
    for s in spans:
        settled = [x for x in spans if x.end is not None and x.end < s.start and x.error is None]
        inflight = [x for x in spans if x.start < s.start and (x.end is None or x.end > s.start)]
        checks = (
            ("max_calls", sum(x.attrs.get("calls", 1) for x in settled) + len(inflight)),
            ("max_prompt_tokens", sum(x.prompt_tokens for x in settled)),
            ("max_completion_tokens", sum(x.completion_tokens for x in settled)),
            ("max_usd", sum(x.cost_usd for x in settled)),
        )
        for field, spent in checks:
            limit = getattr(budget, field)
            if limit is not None and spent >= limit:
                out.append(f"call {s.name!r} (span {s.id}) admitted at {field}: {spent} >= {limit}")
    return out


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A trace dict (``Result.trace``) node and its descendants, depth first."""
    yield node
    for child in node.get("children", []):
        yield from walk(child)


def trace_shape(node: dict[str, Any]) -> tuple[Any, ...]:
    """The tree of (name, kind) of a trace dict, without times or attributes."""
    return (node["name"], node["kind"], tuple(trace_shape(c) for c in node.get("children", [])))


def fakes(backends: Sequence[Backend]) -> list[FakeBackend]:
    """The FakeBackends among ``backends``."""
    return [b for b in backends if isinstance(b, FakeBackend)]


def instance_state(strategy: Strategy) -> dict[str, Any]:
    """A snapshot of the attributes of every node of the strategy tree (identity and size)."""
    state: dict[str, Any] = {}
    stack, seen = [strategy], 0
    while stack:
        node = stack.pop()
        for key, value in vars(node).items():
            size = len(value) if isinstance(value, list | dict | set) else None
            state[f"{seen}.{type(node).__name__}.{key}"] = (id(value), size)
        stack.extend(node.children())
        seen += 1
    return state


class _Recorder(Strategy):
    """Hands a run straight to ``inner`` (no span of its own) and records its RunContext."""

    def __init__(self, inner: Strategy) -> None:  # no config of its own: no super().__init__
        self.inner = inner
        self.config = inner.config
        self.ctx: RunContext | None = None
        self.escaped: BudgetExhausted | None = None

    async def __call__(self, problem: Problem, ctx: RunContext) -> Result:
        self.ctx = ctx
        try:
            return await self.inner(problem, ctx)
        except BudgetExhausted as exc:
            self.escaped = exc
            raise

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        return await self.inner.run(problem, ctx)

    def check(self, resolve: Callable[[str | None], Backend]) -> None:
        self.inner.check(resolve)


def instrument(strategy: Strategy) -> _Recorder:
    """A recorder around ``strategy`` that the Orchestrator sees under the strategy's name."""
    cls = type(f"Recorded_{strategy.name}", (_Recorder,), {"name": strategy.name})
    return cast(_Recorder, cls(strategy))


@dataclass
class Outcome:
    """One finished run: its Result, RunContext, backends and any BudgetExhausted that escaped."""

    result: Result
    ctx: RunContext
    backends: list[Backend]
    escaped: BudgetExhausted | None


class StrategyConformance:
    """Base class of the per-strategy conformance tests. Subclass it; see the module docstring."""

    allowed_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    may_abstain: bool = False
    scenario_timeout: ClassVar[float] = 20.0

    # --- hooks ---------------------------------------------------------------------------------

    def spec(self) -> StrategySpec:
        """The strategy under test, as a small spec."""
        raise NotImplementedError("a StrategyConformance subclass must define spec()")

    def backends(self, **options: Any) -> list[Backend]:
        """The run's backends (the first is the default), built with the FakeBackend ``options``."""
        return [FakeBackend(**options)]

    def make_script(self, *, wrong_rate: float = 0.0, empty: bool = False) -> Script:
        """The FakeBackend script (see ``ConformanceScript``)."""
        return ConformanceScript(wrong_rate=wrong_rate, empty=empty)

    def problem(self, k: int = 0) -> Problem:
        """Conformance problem ``k``, tagged ``Q<k>``."""
        return Problem(question=f"Conformance problem Q{k}: what is 100 plus {7 * k}?", id=f"Q{k}")

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def run(coro: Coroutine[Any, Any, T]) -> T:
        """Run one scenario on a fresh event loop."""
        return asyncio.run(coro)

    def build(self) -> Strategy:
        """A fresh instance of the strategy under test."""
        return build_strategy(self.spec())

    async def solve(
        self,
        *,
        budget: Budget | None = None,
        k: int = 0,
        run_seed: int | None = None,
        backends: list[Backend] | None = None,
        **options: Any,
    ) -> Outcome:
        """Run a fresh instance on problem ``k`` through an Orchestrator.

        The backends are ``backends(**options)`` (the options default to the conformance
        script) unless given; ``run_seed`` seeds the run's RNG. Raises what the run raises.
        """
        options.setdefault("script", self.make_script())
        backends = backends if backends is not None else self.backends(**options)
        strategy = self.build()
        recorder = instrument(strategy)
        try:
            async with asyncio.timeout(self.scenario_timeout):
                orch = Orchestrator(backends)
                result = await orch.run(self.problem(k), recorder, budget, seed=run_seed)
        finally:
            await strategy.aclose()
        assert recorder.ctx is not None
        return Outcome(result, recorder.ctx, backends, recorder.escaped)

    def check_budget(self, out: Outcome, budget: Budget, must_exhaust: bool) -> None:
        """The budget assertions shared by the budget tests (see the module docstring)."""
        assert not budget_violations(out.ctx.trace.backend_spans(), budget)
        if out.escaped is not None:
            live = [c for c in out.ctx.seen if not c.failed]
            assert not live, f"BudgetExhausted escaped with {len(live)} live candidates"
        if must_exhaust:
            assert out.result.budget_exhausted, f"{budget} bound the run but it did not say so"
        answered = any(c.answer is not None and c.finish_reason == "stop" for c in out.ctx.seen)
        if answered and not self.may_abstain:
            assert out.result.answer is not None, "answers were sampled, but none was returned"

    async def budget_sweep(self, budgets: Callable[[Usage], list[tuple[Budget, bool]]]) -> int:
        """Run under each ``(budget, must_exhaust)`` that ``budgets(full usage)`` gives.

        Done twice: on the default backends, and on backends returning one candidate per call
        (so that a strategy asking for n samples at once makes several calls). Backends are
        priced (a dollar a token). Returns how many budgets were tried.
        """
        tried = 0
        variants: tuple[dict[str, Any], ...] = ({}, {"short_n": 1})
        for extra in variants:
            full = (await self.solve(pricing=_PRICING, **extra)).result.usage
            for budget, must_exhaust in budgets(full):
                out = await self.solve(budget=budget, pricing=_PRICING, **extra)
                self.check_budget(out, budget, must_exhaust)
                tried += 1
        return tried

    @staticmethod
    def below(full: int) -> list[int]:
        """Limits to try below a full run's spend ``full``: 1, half and one less."""
        return sorted({1, full // 2, full - 1} & set(range(1, full)))

    # --- 1. budget -----------------------------------------------------------------------------

    def test_completion_token_budget(self) -> None:
        def budgets(full: Usage) -> list[tuple[Budget, bool]]:
            caps = self.below(full.completion_tokens)
            return [(Budget(max_completion_tokens=c), c == 1) for c in caps]

        self.run(self.budget_sweep(budgets))

    def test_call_budget(self) -> None:
        def budgets(full: Usage) -> list[tuple[Budget, bool]]:
            return [(Budget(max_calls=c), True) for c in self.below(full.calls)]

        if not self.run(self.budget_sweep(budgets)):
            pytest.skip("the strategy makes a single call")

    def test_prompt_token_and_dollar_budgets(self) -> None:
        def budgets(full: Usage) -> list[tuple[Budget, bool]]:
            out = [(Budget(max_prompt_tokens=p), False) for p in self.below(full.prompt_tokens)]
            return [*out, (Budget(max_usd=full.cost_usd / 2), False)]

        self.run(self.budget_sweep(budgets))

    def test_deadline(self) -> None:
        async def scenario() -> None:
            limit = 1.5 * _LATENCY
            budget = Budget(max_seconds=limit)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out = await self.solve(budget=budget, latency=_LATENCY, short_n=1)
            elapsed = loop.time() - t0
            assert elapsed < limit + _PROMPT, f"the run took {elapsed:.2f}s"
            self.check_budget(out, budget, must_exhaust=False)

        self.run(scenario())

    # --- 2. cancellation -----------------------------------------------------------------------

    def test_cancellation_during_the_first_call(self) -> None:
        self.run(self._cancel_when(lambda spans: bool(spans), "no backend call"))

    def test_cancellation_during_a_later_call(self) -> None:
        def later_wave(spans: list[Span]) -> bool:
            ended = [s.end for s in spans if s.end is not None]
            return bool(ended) and any(s.end is None and s.start > min(ended) for s in spans)

        self.run(self._cancel_when(later_wave, "no call starts after another one ended", 1))

    async def _cancel_when(
        self, ready: Callable[[list[Span]], bool], nothing: str, short_n: int | None = None
    ) -> None:
        """Cancel the run once ``ready(backend spans)``; check it stops promptly and cleanly.

        ``short_n=1`` makes a strategy that asks for n samples at once top them up call by call.
        """
        backends = self.backends(script=self.make_script(), latency=_LATENCY, short_n=short_n)
        strategy = self.build()
        recorder = instrument(strategy)
        before = asyncio.all_tasks()
        task = asyncio.create_task(Orchestrator(backends).run(self.problem(), recorder))
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.scenario_timeout
        while not task.done() and loop.time() < give_up:
            if recorder.ctx is not None and ready(recorder.ctx.trace.backend_spans()):
                break
            await asyncio.sleep(0.005)
        if task.done():
            task.result()
            await strategy.aclose()
            pytest.skip(f"nothing to cancel: {nothing}")
        assert recorder.ctx is not None
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_PROMPT)
        assert task in done, f"the run did not stop within {_PROMPT}s of being cancelled"
        assert task.cancelled(), f"CancelledError was swallowed or replaced: {task!r}"
        await strategy.aclose()
        for _ in range(5):
            await asyncio.sleep(0)
        current = asyncio.current_task()
        leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        assert not leaked, f"tasks left running after cancellation: {leaked}"
        unclosed = [s.name for s in recorder.ctx.trace.root.walk() if s.end is None]
        assert not unclosed, f"spans left open: {unclosed}"

    # --- 3. determinism ------------------------------------------------------------------------

    def test_deterministic_with_seeds(self) -> None:
        def fingerprint(out: Outcome) -> tuple[Any, ...]:
            r = out.result
            usage = r.usage.model_dump(exclude={"seconds"})
            texts = [sc.candidate.text for sc in r.candidates]
            assert r.trace is not None
            return r.answer, texts, usage, trace_shape(r.trace)

        async def once() -> tuple[Any, ...]:
            script = self.make_script(wrong_rate=0.4)
            return fingerprint(await self.solve(run_seed=5, seed=11, script=script))

        first, second = self.run(once()), self.run(once())
        assert first == second, "the same seeds gave different results"

    # --- 4. concurrency ------------------------------------------------------------------------

    def test_one_instance_serves_concurrent_runs(self) -> None:
        async def scenario() -> None:
            strategy = self.build()
            orch = Orchestrator(self.backends(script=self.make_script()))
            state = instance_state(strategy)
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(orch.run(self.problem(k), strategy)) for k in range(8)]
            finally:
                await strategy.aclose()
            for k, task in enumerate(tasks):
                result = task.result()
                assert result.answer == expected_answer(k), f"problem Q{k} got {result.answer!r}"
                stray = {sc.candidate.answer for sc in result.candidates} - {expected_answer(k)}
                assert stray <= {None}, f"problem Q{k} saw answers of other runs: {stray}"
            assert instance_state(strategy) == state, "a run changed the instance's attributes"

        self.run(scenario())

    # --- 5. trace ------------------------------------------------------------------------------

    def test_trace_is_well_formed(self) -> None:
        out = self.run(self.solve())
        result, name = out.result, self.build().name
        assert result.strategy == name and result.trace is not None
        assert result.trace["kind"] == "run"
        top = result.trace.get("children", [])
        assert [(s["kind"], s["name"]) for s in top] == [("strategy", name)]
        assert top[0].get("attrs", {}).get("answer") == result.answer
        assert not result.budget_exhausted, "an unlimited run reported budget_exhausted"
        backend_spans = [s for s in walk(result.trace) if s["kind"] == "backend"]
        assert backend_spans, "the run made no backend call"
        assert len([s for s in walk(top[0]) if s["kind"] == "backend"]) == len(backend_spans)
        for span in walk(result.trace):
            registry = {"strategy": strategy_registry, "verifier": verifier_registry}
            if span["kind"] in registry:
                assert span["name"] in registry[span["kind"]], f"unregistered span {span['name']}"
        names = {b.name for b in out.backends}
        for b in fakes(out.backends):
            own = [s for s in backend_spans if s["name"] == b.name]
            assert b.calls == len(own), f"backend {b.name!r} called outside ctx.generate"
        assert {s["name"] for s in backend_spans} <= names | {"reward_model"}
        self.assert_usage_matches(result, backend_spans)
        assert [s.name for s in out.ctx.trace.root.walk() if s.end is None] == []
        if result.answer is not None:
            assert result.candidate is not None, "an answer without its chosen candidate"

    @staticmethod
    def assert_usage_matches(result: Result, spans: list[dict[str, Any]]) -> None:
        """``result.usage`` is the sum over the backend spans (tokens, calls, dollars)."""
        usage = result.usage
        assert usage.prompt_tokens == sum(s["prompt_tokens"] for s in spans)
        assert usage.completion_tokens == sum(s["completion_tokens"] for s in spans)
        assert usage.calls == sum(s.get("attrs", {}).get("calls", 0) for s in spans)
        assert usage.cost_usd == pytest.approx(sum(s["cost_usd"] for s in spans))

    # --- 6. failures ---------------------------------------------------------------------------

    def test_all_calls_failing(self) -> None:
        try:
            out = self.run(self.solve(fail_rate=1.0))
        except self.allowed_errors:
            return
        result = out.result
        assert result.answer is None and result.candidate is None
        assert result.details.get("error") or result.budget_exhausted, "no error reported"
        assert all(s.error for s in out.ctx.trace.backend_spans()), "a failed call looks fine"

    def test_some_calls_failing(self) -> None:
        for seed in range(3):
            try:
                out = self.run(self.solve(fail_rate=0.5, seed=seed))
            except self.allowed_errors:
                continue
            result = out.result
            assert result.answer in (expected_answer(0), None)
            if result.answer is None:
                assert result.details.get("error") or result.budget_exhausted

    def test_completions_without_an_answer(self) -> None:
        out = self.run(self.solve(script=self.make_script(empty=True)))
        assert out.result.answer is None

    def test_backend_returning_fewer_candidates(self) -> None:
        out = self.run(self.solve(short_n=1))
        assert out.result.answer == expected_answer(0)
        for span in out.ctx.trace.backend_spans():
            assert span.attrs.get("returned", 0) <= span.attrs.get("n", 1)

    def test_backend_returning_no_candidates(self) -> None:
        out = self.run(self.solve(short_n=0))
        assert out.result.answer is None and out.ctx.seen == []
        chosen = out.result.candidate
        assert chosen is None or chosen.failed, "a candidate chosen from nothing"

    def test_backend_without_capabilities(self) -> None:
        backends = self.backends(script=self.make_script(), capabilities=Capabilities())
        try:
            self.run(self.solve(backends=backends))
        except CapabilityError as exc:
            names = ("logprobs", "top_logprobs", "prefix_continuation", "native_n")
            assert any(n in str(exc) for n in names), f"no capability named in: {exc}"
            assert sum(b.calls for b in fakes(backends)) == 0, "a call before the refusal"
            return
        for b in fakes(backends):
            for req in b.requests:
                assert not (req.logprobs or req.top_logprobs), "logprobs asked of a bare backend"
                assert not req.continue_final, "prefix continuation asked of a bare backend"

    # --- the contract of the class -------------------------------------------------------------

    def test_samples_within_max_samples(self) -> None:
        bound = self.build().max_samples()
        assert bound is not None, (
            f"strategy {self.build().name!r} does not bound its samples: override "
            "Strategy.max_samples() (strategies.base.runs_of helps), or the service refuses it"
        )
        for options in ({}, {"short_n": 1}, {"fail_rate": 0.5, "seed": 1}):
            try:
                out = self.run(self.solve(**options))
            except self.allowed_errors:
                continue
            drawn = sum(int(s.attrs.get("returned", 0)) for s in out.ctx.trace.backend_spans())
            assert drawn <= bound, f"{drawn} samples drawn, above max_samples() = {bound}"

    def test_config_fields_are_classified(self) -> None:
        strategy = self.build()
        missing = unclassified(type(strategy).Config)
        assert not missing, (
            f"strategy {strategy.name!r}: config field(s) {', '.join(missing)} declare no trust "
            "class; add json_schema_extra=tuning() (or tuning(nested=...)) or "
            'privileged("<privilege>", "<what it does>") from orchestrator.trust to each'
        )

    def test_registered_and_describable(self) -> None:
        strategy = self.build()
        assert strategy.name and strategy_registry.get(strategy.name) is type(strategy)
        spec = strategy.describe()
        rebuilt = build_strategy(spec)
        assert type(rebuilt) is type(strategy) and rebuilt.describe() == spec
        assert all(isinstance(c, Strategy) for c in strategy.children())
