"""Orchestrator: runs strategies on problems against a set of backends.

One Orchestrator owns its backends and serves many concurrent runs; each run gets its own
BudgetMeter, Trace and RunContext. ``run`` never raises for budget exhaustion: the result then
carries the best answer so far (a majority vote over every candidate the run saw, when the
strategy itself could not return one) and ``budget_exhausted=True``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from orchestrator.backends.base import Backend
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.config import load_backends
from orchestrator.context import RunContext
from orchestrator.errors import BudgetExhausted, ConfigError
from orchestrator.trace import SpanListener, Trace
from orchestrator.types import Problem, Result, ScoredCandidate
from strategies.base import Strategy, StrategySpec, build_strategy
from strategies.voting import vote

if TYPE_CHECKING:
    from orchestrator.store.cache import CompletionCache


class Orchestrator:
    """Runs strategies against named backends.

    Args:
        backends: the backends, as a mapping by name or an iterable (keyed by ``backend.name``).
        default_backend: the name used when a strategy does not name one (default: the first).
        cache: a completion cache shared by every run (see ``orchestrator.context``), or None.
            The Orchestrator does not own it: whoever opened it closes it.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend] | Iterable[Backend],
        default_backend: str | None = None,
        *,
        cache: CompletionCache | None = None,
    ) -> None:
        self.cache = cache
        if isinstance(backends, Mapping):
            self.backends = dict(backends)
        else:
            self.backends = {b.name: b for b in backends}
        if not self.backends:
            raise ConfigError("an Orchestrator needs at least one backend")
        self.default_backend = default_backend or next(iter(self.backends))
        if self.default_backend not in self.backends:
            raise ConfigError(
                f"default backend {self.default_backend!r} is not among "
                f"{', '.join(sorted(self.backends))}"
            )

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, *, default_backend: str | None = None
    ) -> Orchestrator:
        """Build the backends declared in the backends file (see ``orchestrator.config``)."""
        from orchestrator.backends.kinds import create_backend

        cfg = load_backends(path)
        backends = {name: create_backend(name, b) for name, b in cfg.backends.items()}
        return cls(backends, default_backend or cfg.default)

    def resolve(self, name: str | None) -> Backend:
        """The backend called ``name`` (None = the default); ConfigError lists the known ones."""
        key = name or self.default_backend
        if key not in self.backends:
            raise ConfigError(
                f"unknown backend {key!r}; configured: {', '.join(sorted(self.backends))}"
            )
        return self.backends[key]

    async def run(
        self,
        problem: Problem | str,
        strategy: Strategy | StrategySpec,
        budget: Budget | None = None,
        *,
        backend: str | None = None,
        seed: int | None = None,
        trace_listener: SpanListener | None = None,
    ) -> Result:
        """Solve ``problem`` with ``strategy`` under ``budget``.

        ``trace_listener`` is called with each span of the run's trace as it closes (see
        ``Trace``); the REST service streams a run's progress with it.

        Raises ConfigError / RegistryError / CapabilityError before any backend call when the
        strategy, its backends or their capabilities do not fit; BackendError propagates only
        from strategies that cannot continue without the failed call.
        """
        if isinstance(problem, str):
            problem = Problem(question=problem)
        strat = build_strategy(strategy)
        try:
            return await self._run(problem, strat, budget, backend, seed, trace_listener)
        finally:
            if strat is not strategy:  # built here from a spec: release its verifiers' resources
                await strat.aclose()

    async def _run(
        self,
        problem: Problem,
        strat: Strategy,
        budget: Budget | None,
        backend: str | None,
        seed: int | None,
        trace_listener: SpanListener | None = None,
    ) -> Result:
        default = backend or self.default_backend
        strat.check(lambda name: self.resolve(name or default))
        meter = BudgetMeter(budget)
        trace = Trace(problem_id=problem.id, strategy=strat.name, listener=trace_listener)
        ctx = RunContext(problem, self.backends, default, meter, trace, seed, self.cache)
        t0 = time.perf_counter()
        try:
            result = await strat(problem, ctx)
        except BudgetExhausted:
            result = self._best_so_far(ctx, strat.name)
        finally:
            if meter.exhausted_by:
                trace.root.set(budget_exhausted_by=meter.exhausted_by)
            trace.finish()
        usage = meter.usage.model_copy(update={"seconds": time.perf_counter() - t0})
        return result.model_copy(
            update={
                "usage": usage,
                "trace": trace.to_dict(),
                "budget_exhausted": result.budget_exhausted or meter.exhausted,
                "run_id": uuid.uuid4().hex,
            }
        )

    @staticmethod
    def _best_so_far(ctx: RunContext, name: str) -> Result:
        """A majority vote over every candidate the run saw before the budget ran out."""
        cands = ctx.seen
        v = vote(cands)
        best = cands[v.groups[v.winner][0]] if v.winner is not None else None
        return Result(
            answer=best.answer if best else None,
            candidate=best,
            candidates=[ScoredCandidate(candidate=c) for c in cands],
            budget_exhausted=True,
            strategy=name,
            details={"votes": v.table(cands), "fallback": "best_so_far"},
        )

    async def start(self) -> None:
        """Start every backend (load models, open pools)."""
        for b in self.backends.values():
            await b.start()

    async def aclose(self) -> None:
        """Close every backend."""
        for b in self.backends.values():
            await b.aclose()

    async def __aenter__(self) -> Orchestrator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def describe(self) -> dict[str, Any]:
        """Backends by name with kind, model and capabilities."""
        return {
            name: {"kind": b.kind, "model": b.model, **b.capabilities.model_dump()}
            for name, b in self.backends.items()
        }
