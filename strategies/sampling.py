"""Collecting N candidates: by sampling a backend, or by running a child strategy N times.

Both paths stop cleanly on ``BudgetExhausted`` (keeping what they have) and turn a backend
failure into failed candidates, so a strategy can decide with what it got.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from orchestrator.backends.base import GenerationRequest
from orchestrator.context import RunContext
from orchestrator.errors import BackendError, BudgetExhausted
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Result, ScoredCandidate
from strategies.base import (
    InnerStrategy,
    SamplingConfig,
    Strategy,
    StrategySpec,
    runs_of,
    search_hint,
)


@dataclass
class Collected:
    """Candidates gathered for a strategy, and how gathering ended."""

    candidates: list[Candidate] = field(default_factory=list)
    budget_exhausted: bool = False
    error: str | None = None
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> list[Candidate]:
        """The candidates that did not fail."""
        return [c for c in self.candidates if not c.failed]


async def sample(
    ctx: RunContext, request: GenerationRequest, backend: str | None = None
) -> Collected:
    """Sample ``request.n`` candidates, topping up when a call returns fewer.

    Stops early (keeping what it has) when the budget refuses a call, when a call fails
    (recorded as ``error``), or when two calls in a row return nothing.
    """
    out = Collected()
    empty = 0
    while len(out.candidates) < request.n and empty < 2:
        need = request.n - len(out.candidates)
        try:
            got = await ctx.generate(request.model_copy(update={"n": need}), backend)
        except BudgetExhausted:
            out.budget_exhausted = True
            break
        except BackendError as exc:
            out.error = str(exc)
            break
        empty = 0 if got else empty + 1
        out.candidates.extend(got[:need])
    if empty >= 2 and out.error is None:
        out.error = "the backend returned no candidates twice in a row"
    return out


def result_candidate(result: Result) -> Candidate:
    """A child run's outcome as one candidate (a failed one when the child found nothing)."""
    if result.candidate is None:
        err = str(result.details.get("error", "no candidate"))
        return Candidate(text="", finish_reason="error", error=err)
    return result.candidate.model_copy(update={"answer": result.answer})


async def run_children(problem: Problem, ctx: RunContext, child: Strategy, n: int) -> Collected:
    """Run ``child`` ``n`` times concurrently; each run's chosen candidate becomes one candidate."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(child(problem, ctx)) for _ in range(n)]
    results = [t.result() for t in tasks]
    errors = [r.details["error"] for r in results if r.details.get("error")]
    return Collected(
        candidates=[result_candidate(r) for r in results],
        budget_exhausted=any(r.budget_exhausted for r in results),
        error=str(errors[0]) if errors else None,
        results=results,
    )


class NSamplesConfig(SamplingConfig):
    """Config of strategies that gather N candidates, by sampling or from a child strategy."""

    n: int = Field(
        8,
        ge=1,
        le=1024,
        description="number of samples (or child runs)",
        json_schema_extra=search_hint(1, 32, log=True),
    )
    inner: StrategySpec | None = Field(
        None,
        description="a child strategy run n times instead of sampling directly",
        json_schema_extra=tuning(nested="strategy"),
    )


class NSamplesStrategy(InnerStrategy):
    """Base of strategies that gather N candidates first (best_of_n, self_consistency, ...)."""

    Config = NSamplesConfig

    def max_samples(self) -> int | None:
        """``n`` samples (or child runs), plus what the verifiers draw to score them."""
        gathered = runs_of(self.config.n, self.inner)
        if gathered is None:
            return None
        return gathered + sum(v.max_samples(self.config.n) for v in self.verifiers())

    def wants_logprobs(self) -> bool:
        """Whether direct samples should carry logprobs (subclasses decide)."""
        return False

    async def collect(self, problem: Problem, ctx: RunContext) -> Collected:
        """N candidates from the child strategy, or N samples from the backend."""
        if self.inner is not None:
            return await run_children(problem, ctx, self.inner, self.config.n)
        request = self.config.request(problem, n=self.config.n, logprobs=self.wants_logprobs())
        return await sample(ctx, request, self.config.backend)


def base_details(got: Collected) -> dict[str, Any]:
    """Details every N-sample strategy reports."""
    details: dict[str, Any] = {
        "samples": len(got.candidates),
        "failed": len(got.candidates) - len(got.ok),
    }
    if got.error:
        details["error"] = got.error
    return details


async def score_and_pick(
    verifier: Any, problem: Problem, got: Collected, ctx: RunContext
) -> tuple[list[ScoredCandidate], int | None]:
    """Score every candidate with ``verifier``; the index of the best live one (None if none).

    A candidate with an extracted answer beats one without; then the higher score wins; ties
    break towards the earlier candidate. Nothing is scored when every candidate failed.
    """
    cands = got.candidates
    if not got.ok:
        return [ScoredCandidate(candidate=c) for c in cands], None
    scores = await verifier(problem, cands, ctx)
    live = [i for i, c in enumerate(cands) if not c.failed]
    best = max(live, key=lambda i: (cands[i].answer is not None, scores[i].value, -i))
    return [
        ScoredCandidate(candidate=c, scores=[s]) for c, s in zip(cands, scores, strict=True)
    ], best
