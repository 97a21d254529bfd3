"""RunContext: what a strategy gets for one run, passed explicitly (no globals).

It holds the problem, the backends, the run's BudgetMeter and Trace, and a seeded RNG.
``RunContext.generate`` is the only way a strategy reaches a backend: it asks the meter to admit
the call (which may narrow ``n`` or ``max_tokens`` to fit), records a ``backend`` span with
tokens, latency and cost, settles the meter with what was really spent, and extracts each
candidate's final answer in the problem's answer format.

With a completion cache (``orchestrator.store.CompletionCache``), each sample of a request gets
an index: the k-th sample this run asks for with the same model, prompt and sampling
parameters. Indices found in the cache are served from it; only the missing ones go to the
backend, and fresh samples are stored under their indices. So a re-run reuses its samples, and
two strategies that ask for the same samples share them. Cached samples are charged to the
budget like fresh ones (a strategy behaves the same with or without the cache); usage reports
them separately in ``cached_tokens``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping

from orchestrator.answers import extract_answer
from orchestrator.backends.base import Backend, Generation, GenerationRequest
from orchestrator.budget import BudgetMeter
from orchestrator.errors import RegistryError
from orchestrator.store.cache import CachedSample, CompletionCache, cache_key
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Usage

log = logging.getLogger(__name__)


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """A cheap upper-ish estimate of prompt tokens (about 4 characters per token)."""
    if request.prompt is not None:
        chars = len(request.prompt)
    else:
        chars = sum(len(m.content) + 8 for m in request.messages or [])
    return chars // 4 + 1


class RunContext:
    """Per-run state shared by the strategy tree of one run. Never shared between runs.

    Attributes:
        problem: the problem being solved.
        meter: the run's BudgetMeter.
        trace: the run's Trace.
        rng: a seeded ``random.Random`` for strategies that make random choices.
        seen: every candidate any backend call of this run returned (best-so-far fallback).
        cache: the completion cache, or None.
    """

    def __init__(
        self,
        problem: Problem,
        backends: Mapping[str, Backend],
        default_backend: str,
        meter: BudgetMeter,
        trace: Trace,
        seed: int | None = None,
        cache: CompletionCache | None = None,
    ) -> None:
        self.problem = problem
        self.backends = backends
        self.default_backend = default_backend
        self.meter = meter
        self.trace = trace
        self.seed = seed
        self.rng = random.Random(seed)
        self.seen: list[Candidate] = []
        self.cache = cache
        self._sample_offsets: dict[str, int] = {}

    def backend(self, name: str | None = None) -> Backend:
        """The backend called ``name``, or the run's default backend."""
        key = name or self.default_backend
        try:
            return self.backends[key]
        except KeyError:
            known = ", ".join(sorted(self.backends)) or "(none)"
            raise RegistryError(f"unknown backend {key!r}; configured: {known}") from None

    async def generate(
        self, request: GenerationRequest, backend: str | None = None, *, extract: bool = True
    ) -> list[Candidate]:
        """Sample through the meter and the trace.

        Returns the candidates (possibly fewer than ``request.n`` when the meter narrowed the
        request to fit the budget). Raises BudgetExhausted when the meter refuses the call or
        the run's deadline passes during it, and BackendError when the backend fails.
        """
        b = self.backend(backend)
        wanted_tokens = request.max_tokens
        adm = self.meter.admit(
            request.n, request.max_tokens, estimate_prompt_tokens(request), b.pricing
        )
        if request.seed is None and self.seed is not None:
            request = request.model_copy(update={"seed": self.rng.randrange(2**31)})
        if adm.n != request.n or adm.max_tokens != request.max_tokens:
            request = request.model_copy(update={"n": adm.n, "max_tokens": adm.max_tokens})
        with self.trace.span(
            b.name, kind="backend", model=b.model, n=request.n, max_tokens=request.max_tokens
        ) as span:
            if adm.narrowed:
                span.set(narrowed_by_budget=True)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(self.meter.seconds_left()) as deadline:
                    gen = await self._fetch(b, request)
            except TimeoutError:
                self.meter.release(adm)
                if not deadline.expired():  # the backend's own timeout, not the run's deadline
                    raise
                raise self.meter.refuse("seconds", "deadline passed during a call") from None
            except BaseException:
                self.meter.release(adm)
                raise
            cost = b.pricing.cost(gen.prompt_tokens, gen.completion_tokens)
            cached = sum(c.tokens for c in gen.candidates if c.cached)
            self.meter.settle(
                adm,
                Usage(
                    prompt_tokens=gen.prompt_tokens,
                    completion_tokens=gen.completion_tokens,
                    calls=gen.calls,
                    cost_usd=cost,
                    seconds=time.perf_counter() - t0,
                    cached_tokens=cached,
                ),
            )
            span.prompt_tokens = gen.prompt_tokens
            span.completion_tokens = gen.completion_tokens
            span.cost_usd = cost
            span.set(calls=gen.calls, returned=len(gen.candidates))
            if cached:
                span.set(cached_tokens=cached)
            if adm.max_tokens < wanted_tokens and any(
                c.finish_reason == "length" for c in gen.candidates
            ):  # a sample was cut short by the budget itself
                self.meter.mark_exhausted("completion_tokens")
                span.set(truncated_by_budget=True)
        cands = gen.candidates
        if extract:
            fmt = self.problem.answer_format
            cands = [c.model_copy(update={"answer": extract_answer(c.text, fmt)}) for c in cands]
        self.seen.extend(cands)
        return cands

    async def _fetch(self, b: Backend, request: GenerationRequest) -> Generation:
        """``b.generate(request)``, through the completion cache when there is one.

        A fully cached request counts as one call with the prompt tokens of the call that
        produced it, so usage and budget do not depend on whether the cache was warm. A cache
        that cannot be read or written is logged and bypassed, never fatal to the run.
        """
        cache = self.cache
        if cache is None:
            return await b.generate(request)
        key = cache_key(b.model, request)
        start = self._sample_offsets.get(key, 0)
        self._sample_offsets[key] = start + request.n
        indices = list(range(start, start + request.n))
        try:
            hits = await cache.get_many(key, indices)
        except Exception as exc:  # a broken cache must not fail the run
            log.warning("completion cache read failed (%s); calling the backend", exc)
            hits = {}
        missing = [i for i in indices if i not in hits]
        fresh = Generation(candidates=[], calls=0)
        if missing:
            fresh = await b.generate(request.model_copy(update={"n": len(missing)}))
            new = {
                i: CachedSample(candidate=c, prompt_tokens=fresh.prompt_tokens)
                for i, c in zip(missing, fresh.candidates, strict=False)
                if not c.failed
            }
            try:
                await cache.put_many(key, b.model, new)
            except Exception as exc:
                log.warning("completion cache write failed (%s); results not cached", exc)
        if not hits:
            return fresh
        got = iter(fresh.candidates)
        cands = [hits[i].candidate if i in hits else next(got, None) for i in indices]
        return Generation(
            candidates=[c for c in cands if c is not None],
            prompt_tokens=fresh.prompt_tokens
            if missing
            else max(h.prompt_tokens for h in hits.values()),
            completion_tokens=fresh.completion_tokens
            + sum(h.candidate.tokens for h in hits.values()),
            calls=fresh.calls if missing else 1,
        )
