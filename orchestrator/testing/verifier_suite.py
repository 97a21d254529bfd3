"""The verifier conformance suite: the contract every verifier must keep, as pytest tests.

Like Optuna's ``testing/pytest_samplers.py``: a test module subclasses ``VerifierConformance``
once per verifier (the class name must start with ``Test`` for pytest to collect it) and
provides ``make_verifier()``; the suite's test methods then run against it::

    from orchestrator.testing.verifier_suite import VerifierConformance

    class TestMyVerifier(VerifierConformance):
        def make_verifier(self) -> Verifier:
            return build_verifier({"verifier": "my_verifier", "strictness": 2})

Hooks a subclass may override (each is called afresh for every scoring run, so state never
leaks between runs): ``make_backend(latency=...)`` (default: a ``FakeBackend``),
``make_problem()`` (default: a question without a reference answer) and ``make_candidates()``
(default: three distinct completions with answers and logprobs). Class attributes:
``score_range`` (the documented range of ``Score.value``, inclusive) and
``position_independent`` (whether a candidate's score is independent of its position in the
batch; set it to False for listwise verifiers).

The tests are synchronous and drive each scenario with ``asyncio.run``, so the suite needs no
pytest plugin. What they check:

- one ``Score`` per candidate, in order, named after the verifier, within ``score_range``;
- an empty candidate list gives ``[]`` without a backend call;
- failed candidates are scored without an exception;
- the call records a ``verifier`` span named after the verifier, with the candidate count;
- model calls go through ``ctx.generate`` (a FakeBackend saw as many calls as the trace has
  backend spans named after it); the meter is charged the calls (``calls`` attribute, default
  1) and completion tokens of every backend span, and every backend span nests inside the
  verifier span;
- cancellation propagates as ``CancelledError`` (at the first suspension and during a backend
  call) and leaves no task behind;
- ``build_verifier(verifier.describe())`` round-trips to an equivalent verifier;
- one instance serves concurrent ``score`` calls with the same results as sequential ones;
- ``max_samples(len(candidates))`` bounds the model samples a call draws, and every config field
  declares its trust class (``orchestrator.trust``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import pytest

from orchestrator.backends.base import Backend
from orchestrator.budget import BudgetMeter
from orchestrator.context import RunContext
from orchestrator.registry import verifiers as registry
from orchestrator.testing.fake_backend import FakeBackend, default_text
from orchestrator.trace import Span, Trace
from orchestrator.trust import unclassified
from orchestrator.types import Candidate, Problem, Score, TokenLogprob
from verifiers.base import Verifier, build_verifier

T = TypeVar("T")

#: How long the cancellation test waits for a verifier to reach its first backend call.
_REACH_BACKEND_SECONDS = 5.0


def sample_candidate(answer: str, index: int = 0) -> Candidate:
    """A live candidate whose text (distinct per ``index``) ends in ``\\boxed{answer}``."""
    text = f"Attempt {index}. " + default_text(answer)
    words = text.split(" ")
    logprobs = [
        TokenLogprob(token=w, logprob=-0.1 * (1 + (i + index) % 5)) for i, w in enumerate(words)
    ]
    return Candidate(
        text=text,
        tokens=len(words),
        logprobs=logprobs,
        finish_reason="stop",
        answer=answer,
        model="fake-model",
        backend="fake",
    )


def failed_candidate(text: str = "") -> Candidate:
    """A candidate standing for a failed sample (``error`` set, ``finish_reason="error"``)."""
    return Candidate(text=text, finish_reason="error", error="BackendUnavailable: injected")


class VerifierConformance:
    """Base class of the per-verifier conformance tests. Subclass it; see the module docstring."""

    score_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    position_independent: ClassVar[bool] = True

    # --- hooks ---------------------------------------------------------------------------------

    def make_verifier(self) -> Verifier:
        """The verifier under test (a fresh instance per call)."""
        raise NotImplementedError("a VerifierConformance subclass must define make_verifier()")

    def make_backend(self, *, latency: float = 0.0) -> Backend:
        """The run's default backend; calls should take about ``latency`` seconds."""
        return FakeBackend(latency=latency)

    def make_problem(self) -> Problem:
        """The problem the candidates answer."""
        return Problem(question="What is 6 times 7?")

    def make_candidates(self) -> list[Candidate]:
        """At least two live candidates, with distinct texts."""
        return [sample_candidate(a, i) for i, a in enumerate(("42", "41", "42"))]

    # --- helpers -------------------------------------------------------------------------------

    def make_context(self, backend: Backend | None = None) -> RunContext:
        """A fresh run context around ``backend`` (default: ``make_backend()``)."""
        b = backend if backend is not None else self.make_backend()
        return RunContext(self.make_problem(), {b.name: b}, b.name, BudgetMeter(), Trace())

    @staticmethod
    def run(coro: Coroutine[Any, Any, T]) -> T:
        """Run one scenario on a fresh event loop."""
        return asyncio.run(coro)

    async def score(
        self,
        verifier: Verifier,
        candidates: list[Candidate] | None = None,
        ctx: RunContext | None = None,
    ) -> list[Score]:
        """Score through ``verifier.__call__`` (span and contract checks included)."""
        ctx = ctx if ctx is not None else self.make_context()
        cands = self.make_candidates() if candidates is None else candidates
        return await verifier(self.make_problem(), cands, ctx)

    def assert_in_range(self, scores: list[Score]) -> None:
        """Every score is a real number within ``score_range`` (NaN fails)."""
        lo, hi = self.score_range
        for i, s in enumerate(scores):
            assert isinstance(s.value, float | int), f"score {i} is {s.value!r}"
            assert lo <= s.value <= hi, f"score {i} = {s.value} is outside {self.score_range}"

    @staticmethod
    def verifier_span(ctx: RunContext, name: str) -> Span:
        """The run's top-level verifier span (exactly one is expected)."""
        spans = [s for s in ctx.trace.root.children if s.kind == "verifier"]
        assert len(spans) == 1, f"expected one top-level verifier span, got {len(spans)}"
        assert spans[0].name == name
        return spans[0]

    # --- tests ---------------------------------------------------------------------------------

    def test_registered_under_its_name(self) -> None:
        verifier = self.make_verifier()
        assert verifier.name, "a verifier class must be registered (it sets `name`)"
        assert registry.get(verifier.name) is type(verifier)

    def test_one_score_per_candidate_in_order(self) -> None:
        verifier = self.make_verifier()
        cands = self.make_candidates()
        assert len(cands) >= 2, "make_candidates() must return at least two candidates"
        scores = self.run(self.score(verifier, cands))
        assert len(scores) == len(cands)
        assert all(isinstance(s, Score) and s.verifier == verifier.name for s in scores)
        if self.position_independent:
            reversed_scores = self.run(self.score(verifier, cands[::-1]))
            assert [s.value for s in reversed_scores][::-1] == [s.value for s in scores]

    def test_scores_within_range(self) -> None:
        self.assert_in_range(self.run(self.score(self.make_verifier())))

    def test_empty_candidate_list(self) -> None:
        ctx = self.make_context()
        assert self.run(self.score(self.make_verifier(), [], ctx)) == []
        assert ctx.trace.backend_spans() == [] and ctx.meter.usage.calls == 0

    def test_failed_candidates_are_handled(self) -> None:
        cands = self.make_candidates()
        mixed = [failed_candidate(), cands[0], failed_candidate("partial output"), *cands[1:]]
        scores = self.run(self.score(self.make_verifier(), mixed))
        assert len(scores) == len(mixed)
        self.assert_in_range(scores)

    def test_records_a_verifier_span(self) -> None:
        verifier, ctx = self.make_verifier(), self.make_context()
        cands = self.make_candidates()
        self.run(self.score(verifier, cands, ctx))
        span = self.verifier_span(ctx, verifier.name)
        assert span.attrs["candidates"] == len(cands)
        assert span.end is not None and span.error is None

    def test_model_calls_are_charged_to_the_budget(self) -> None:
        verifier, backend = self.make_verifier(), self.make_backend()
        ctx = self.make_context(backend)
        self.run(self.score(verifier, ctx=ctx))
        spans = ctx.trace.backend_spans()
        if isinstance(backend, FakeBackend):  # other backend spans: e.g. reward-model requests
            own = [s for s in spans if s.name == backend.name]
            assert backend.calls == len(own), "backend called outside ctx.generate"
        if spans:
            assert ctx.meter.usage.calls == sum(s.attrs.get("calls", 1) for s in spans)
            completion = sum(s.completion_tokens for s in spans)
            assert ctx.meter.usage.completion_tokens == completion
            inside = {id(s) for s in self.verifier_span(ctx, verifier.name).walk()}
            assert all(id(s) in inside for s in spans), "backend span outside the verifier span"

    def test_samples_within_max_samples(self) -> None:
        verifier, ctx = self.make_verifier(), self.make_context()
        cands = self.make_candidates()
        self.run(self.score(verifier, cands, ctx))
        drawn = sum(
            int(s.attrs.get("returned", 0)) for s in ctx.trace.backend_spans() if "n" in s.attrs
        )
        bound = verifier.max_samples(len(cands))
        assert drawn <= bound, f"{drawn} model samples, above max_samples({len(cands)}) = {bound}"

    def test_config_fields_are_classified(self) -> None:
        verifier = self.make_verifier()
        missing = unclassified(type(verifier).Config)
        assert not missing, (
            f"verifier {verifier.name!r}: config field(s) {', '.join(missing)} declare no trust "
            "class; add json_schema_extra=tuning() (or tuning(nested=...)) or "
            'privileged("<privilege>", "<what it does>") from orchestrator.trust to each'
        )

    def test_cancellation_at_first_suspension(self) -> None:
        async def scenario() -> None:
            before = asyncio.all_tasks()
            task = asyncio.create_task(self.score(self.make_verifier(), ctx=self.make_context()))
            await asyncio.sleep(0)
            if task.done():
                pytest.skip("the verifier finished without suspending: nothing to cancel")
            await self._cancel_and_check(task, before)

        self.run(scenario())

    def test_cancellation_during_a_backend_call(self) -> None:
        async def scenario() -> None:
            ctx = self.make_context(self.make_backend(latency=0.5))
            before = asyncio.all_tasks()
            task = asyncio.create_task(self.score(self.make_verifier(), ctx=ctx))
            loop = asyncio.get_running_loop()
            give_up = loop.time() + _REACH_BACKEND_SECONDS
            while not task.done() and not ctx.trace.backend_spans() and loop.time() < give_up:
                await asyncio.sleep(0.001)
            if task.done():
                task.result()
                pytest.skip("the verifier makes no backend call")
            assert ctx.trace.backend_spans(), "no backend call within the time limit"
            await self._cancel_and_check(task, before)

        self.run(scenario())

    @staticmethod
    async def _cancel_and_check(task: asyncio.Task[Any], before: set[asyncio.Task[Any]]) -> None:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled(), "CancelledError was swallowed or replaced"
        for _ in range(5):
            await asyncio.sleep(0)
        current = asyncio.current_task()
        leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        assert not leaked, f"tasks left running after cancellation: {leaked}"

    def test_build_round_trip(self) -> None:
        verifier = self.make_verifier()
        spec = verifier.describe()
        assert spec["verifier"] == verifier.name
        assert json.loads(json.dumps(spec)) == spec, "describe() must be JSON-serialisable"
        rebuilt = build_verifier(spec)
        assert type(rebuilt) is type(verifier)
        assert rebuilt.describe() == spec
        first = self.run(self.score(verifier))
        again = self.run(self.score(rebuilt))
        assert [s.value for s in again] == [s.value for s in first]

    def test_concurrent_calls_give_identical_results(self) -> None:
        verifier = self.make_verifier()
        expected = [s.value for s in self.run(self.score(verifier))]

        async def scenario() -> list[list[Score]]:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.score(verifier)) for _ in range(4)]
            return [t.result() for t in tasks]

        for scores in self.run(scenario()):
            assert [s.value for s in scores] == expected
