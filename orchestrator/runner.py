"""Orchestrator: runs strategies on problems against a set of backends.

One Orchestrator owns its backends and serves many concurrent runs; each run gets its own
BudgetMeter, Trace and RunContext. ``run`` never raises for budget exhaustion: the result then
carries the best answer so far (a majority vote over every candidate the run saw, when the
strategy itself could not return one) and ``budget_exhausted=True``.

``Orchestrator.from_config`` is the one builder every surface uses (the CLI, the evaluation
harness, the search workers, the REST service, in-process Python): it takes plain values and
builds nothing yet. A run first checks its whole strategy tree (names and fields when the spec
is built, then the capabilities of every backend the tree uses), and only then builds and starts
those backends, so a bad spec fails in milliseconds and never waits for a vLLM engine, and a
declared backend that no run uses (a remote API without its key, say) is never built.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from orchestrator.backends.backend_set import BackendSet
from orchestrator.backends.base import Backend
from orchestrator.backends.config import BackendsFile, load_backends
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.config import validate_config
from orchestrator.context import RunContext
from orchestrator.errors import BudgetExhausted, ConfigError
from orchestrator.store.cache import CompletionCache
from orchestrator.trace import SpanListener, Trace
from orchestrator.types import Problem, Result, ScoredCandidate
from strategies.base import Strategy, StrategySpec, build_strategy
from strategies.voting import vote

BackendsSource = str | Path | Mapping[str, Any] | BackendsFile | None
"""Where ``from_config`` gets the backends: a file, a mapping in the file's shape, a validated
``BackendsFile``, or None (``$TTC_BACKENDS_FILE``, ``./configs/backends.yaml``, built-in)."""


def backends_file(source: BackendsSource) -> BackendsFile:
    """The validated backends declaration from any ``BackendsSource``."""
    if isinstance(source, BackendsFile):
        return source
    if isinstance(source, Mapping):
        cfg: BackendsFile = validate_config(BackendsFile, dict(source), "backends mapping")
        return cfg
    return load_backends(source)


class Orchestrator:
    """Runs strategies against named backends.

    Args:
        backends: the backends, as a mapping by name (a ``BackendSet`` builds each on first
            use) or an iterable of instances (keyed by ``backend.name``).
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
            self.backends: Mapping[str, Backend] = backends
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
        self._started: dict[str, asyncio.Future[None]] = {}
        self._owner = True

    @classmethod
    def from_config(
        cls,
        backends: BackendsSource = None,
        *,
        default_backend: str | None = None,
        only: Iterable[str] | None = None,
        model: str | None = None,
        progress: Callable[[str], None] | None = None,
        cache: CompletionCache | None = None,
    ) -> Orchestrator:
        """An Orchestrator over declared backends, each built and started when a run first
        needs it (see the module docstring).

        Args:
            backends: the declaration (see ``BackendsSource``).
            default_backend: the run's default backend (None: the file's default).
            only: the backend names that may be used (None: every declared one).
            model: a model override for the default backend.
            progress: a callback for long preparation steps (the embedded model's conversion).
            cache: a completion cache (not owned).

        Raises:
            ConfigError: an invalid declaration, or an unknown backend name.
        """
        cfg = backends_file(backends)
        default = default_backend or cfg.default
        if default not in cfg.backends:
            raise ConfigError(
                f"unknown backend {default!r}; configured: {', '.join(sorted(cfg.backends))}"
            )
        models = {default: model} if model else None
        pool = BackendSet(cfg, only=only, models=models, progress=progress)
        return cls(pool, default, cache=cache)

    def with_backend(self, backend: Backend) -> Orchestrator:
        """A view of this Orchestrator in which ``backend`` replaces the one of the same name
        (e.g. the same transport serving another model). It shares everything else; closing
        the view closes nothing."""
        backends = ChainMap({backend.name: backend}, cast(dict[str, Backend], self.backends))
        view = Orchestrator(backends, self.default_backend, cache=self.cache)
        view._started = self._started
        view._owner = False
        return view

    def resolve(self, name: str | None) -> Backend:
        """The backend called ``name`` (None = the default), built if it was not yet;
        ConfigError lists the known ones."""
        key = name or self.default_backend
        if key not in self.backends:
            raise ConfigError(
                f"unknown backend {key!r}; configured: {', '.join(sorted(self.backends))}"
            )
        return self.backends[key]

    async def prepare(
        self, strategy: Strategy | StrategySpec, backend: str | None = None
    ) -> tuple[Strategy, list[str]]:
        """Build ``strategy`` (when a spec) and check it against the backends it would use,
        without starting any engine: ``(strategy, backend names used)``.

        A backend whose capabilities depend on its server (an ``openai`` backend with
        ``server: auto``) is probed first (one HTTP request). A strategy built here is the
        caller's to close (``aclose``) when it is not the one passed in.

        Raises:
            ConfigError / RegistryError: an unknown strategy, verifier or backend, or a bad
                config field.
            CapabilityError: a backend lacks a capability the tree needs.
        """
        strat = build_strategy(strategy)
        try:
            default = backend or self.default_backend
            used: dict[str, Backend] = {}

            def record(name: str | None) -> Backend:
                key = name or default  # the name in this Orchestrator, not ``Backend.name``
                used[key] = self.resolve(key)
                return used[key]

            strat.check(record)  # names every backend the tree uses
            for b in used.values():
                await b.probe()
            strat.check(lambda name: self.resolve(name or default))
        except BaseException:
            if strat is not strategy:
                await strat.aclose()
            raise
        return strat, sorted(used)

    async def check(self, strategy: StrategySpec, backend: str | None = None) -> None:
        """Raise the error ``run`` would raise for ``strategy`` before its first call (see
        ``prepare``); starts nothing."""
        strat, _ = await self.prepare(strategy, backend)
        await strat.aclose()

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

        Raises ConfigError / RegistryError / CapabilityError before any backend is started when
        the strategy, its backends or their capabilities do not fit (see ``prepare``);
        BackendError when a backend cannot start, or from strategies that cannot continue
        without a failed call.
        """
        if isinstance(problem, str):
            problem = Problem(question=problem)
        strat, used = await self.prepare(strategy, backend)
        try:
            await self.start(used)
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

    async def start(self, names: Iterable[str] | None = None) -> None:
        """Start the backends ``names`` (default: the default backend), building them first;
        each is started once, however many runs ask at the same time."""
        for name in [self.default_backend] if names is None else names:
            task = self._started.get(name)
            if task is None or (task.done() and task.exception() is not None):
                task = asyncio.ensure_future(self.resolve(name).start())
                self._started[name] = task
            await asyncio.shield(task)

    def built(self) -> dict[str, Backend]:
        """The backends built so far (every backend, for a plain mapping of instances)."""
        if isinstance(self.backends, BackendSet):
            return self.backends.built()
        return dict(self.backends)

    async def aclose(self) -> None:
        """Close every backend that was built (a view made by ``with_backend`` closes none)."""
        if not self._owner:
            return
        for b in self.built().values():
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
        """The built backends by name with kind, model and capabilities."""
        return {
            name: {"kind": b.kind, "model": b.model, **b.capabilities.model_dump()}
            for name, b in self.built().items()
        }
