"""``early_stopping_sc``: self-consistency that stops once the vote is decided.

Adaptive-Consistency (Aggarwal, Madaan, Yang, Mausam, "Let's Sample Step by Step:
Adaptive-Consistency for Efficient Reasoning and Coding with LLMs", EMNLP 2023), with its Beta
stopping rule. Samples are drawn in batches; after each batch the answers are grouped as in
self-consistency, and with ``a`` votes for the leading answer and ``b`` for the runner-up the
run stops when

    P(p_lead > p_second | a, b) = P(X > 1/2),  X ~ Beta(a + 1, b + 1)

reaches ``threshold`` (0.95 in the paper), or after ``n_max`` samples (40 in the paper). The
answer is the majority answer of the samples drawn; ``details`` reports ``samples_used``,
``stopped_early``, the ``posterior`` at the stop, the vote table and the confidence.

Batching: the paper draws one sample at a time. Batches of 4 (the default) lose nothing on a
unanimous vote, since 4 is the fewest votes that can pass the 0.95 rule (``a=3, b=0`` gives
0.9375, ``a=4, b=0`` gives 0.96875), and the batch is one request with ``n=4``. With
``parallel_batches > 1`` up to that many batches are in flight at once (lower latency, more
tokens); once the rule fires the batches still in flight are cancelled, and ``RunContext``
releases their budget reservations. Batches are counted in the order they were started, so the
outcome does not depend on which call returns first: a later batch that happened to finish
before the deciding one is left out of the vote (``discarded_batches``; its tokens were spent).

With ``inner``, each vote is the answer of one run of a child strategy. Failed samples do not
vote; a batch whose call fails still counts towards ``n_max``, so the loop is bounded. When the
budget runs out, no new batch starts and the current leader is returned with
``budget_exhausted=True``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from scipy.special import betainc

from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trace import Span
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Result, ScoredCandidate
from strategies.base import InnerStrategy, SamplingConfig, StrategySpec, runs_of
from strategies.sampling import Collected, run_children, sample
from strategies.voting import vote


def prob_lead_beats_second(a: float, b: float) -> float:
    """P(p_lead > p_second) given ``a`` votes for the leader and ``b`` for the runner-up.

    Adaptive-Consistency's Beta rule: the leader's share of the top two answers has the
    posterior Beta(a + 1, b + 1) under a uniform prior, and the result is the probability that
    this share exceeds 1/2, i.e. ``scipy.stats.beta.sf(0.5, a + 1, b + 1)``, computed exactly
    as the regularised incomplete beta function ``I_{1/2}(b + 1, a + 1)``.

    Raises:
        ValueError: when a count is negative.
    """
    if a < 0 or b < 0:
        raise ValueError(f"vote counts must be >= 0, got a={a}, b={b}")
    return float(betainc(b + 1.0, a + 1.0, 0.5))


def top_two(weights: Sequence[float]) -> tuple[float, float]:
    """The largest and second-largest vote weights (0 for a missing group)."""
    ordered = [*sorted(weights, reverse=True), 0.0, 0.0]
    return ordered[0], ordered[1]


def batch_sizes(n_max: int, batch_size: int) -> list[int]:
    """Sizes of the successive batches: full batches, then the remainder up to ``n_max``."""
    full, rest = divmod(n_max, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


class EarlyStoppingSCConfig(SamplingConfig):
    """``early_stopping_sc`` options (defaults: the paper's N_max=40 and threshold 0.95)."""

    n_max: int = Field(
        40,
        ge=1,
        le=1024,
        description="the most samples (or child runs) drawn",
        json_schema_extra=tuning(),
    )
    batch_size: int = Field(
        4,
        ge=1,
        le=1024,
        description="samples per batch; rule checked after",
        json_schema_extra=tuning(),
    )
    threshold: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="stop when P(lead beats runner-up) >= this",
        json_schema_extra=tuning(),
    )
    parallel_batches: int = Field(
        1,
        ge=1,
        le=64,
        description="batches in flight at once; extra ones cancelled on a stop",
        json_schema_extra=tuning(),
    )
    inner: StrategySpec | None = Field(
        None,
        description="a child strategy whose runs are the votes, instead of direct samples",
        json_schema_extra=tuning(nested="strategy"),
    )


@dataclass
class _Progress:
    """What one run has gathered so far (a local of ``run``, never stored on the strategy)."""

    candidates: list[Candidate] = field(default_factory=list)
    batches: int = 0
    posterior: float = 0.5
    decided: bool = False
    stopped_early: bool = False
    budget_exhausted: bool = False
    error: str | None = None
    cancelled: int = 0
    discarded: int = 0


@strategies.register("early_stopping_sc")
class EarlyStoppingSC(InnerStrategy):
    """Self-consistency in batches with Adaptive-Consistency's Beta stopping rule."""

    Config = EarlyStoppingSCConfig

    def max_samples(self) -> int | None:
        """At most ``n_max`` samples (or child runs)."""
        return runs_of(self.config.n_max, self.inner)

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        prog = await self._collect(problem, ctx)
        cands = prog.candidates
        v = vote(cands)
        best = v.groups[v.winner][0] if v.winner is not None else None
        details: dict[str, Any] = {
            "samples_used": len(cands),
            "failed": sum(c.failed for c in cands),
            "batches": prog.batches,
            "stopped_early": prog.stopped_early,
            "posterior": round(prog.posterior, 6),
            "votes": v.table(cands),
            "confidence": round(v.confidence, 6),
            "cancelled_batches": prog.cancelled,
            "discarded_batches": prog.discarded,
        }
        if prog.error:
            details["error"] = prog.error
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=[ScoredCandidate(candidate=c) for c in cands],
            budget_exhausted=prog.budget_exhausted,
            details=details,
        )

    async def _collect(self, problem: Problem, ctx: RunContext) -> _Progress:
        """Draw batches (up to ``parallel_batches`` in flight) until the rule fires or the cap."""
        cfg = self.config
        sizes = batch_sizes(cfg.n_max, cfg.batch_size)
        prog = _Progress()
        pending: deque[asyncio.Task[tuple[Span, Collected]]] = deque()
        started = 0
        async with asyncio.TaskGroup() as tg:
            while True:
                while (
                    len(pending) < cfg.parallel_batches
                    and started < len(sizes)
                    and not prog.budget_exhausted
                ):
                    pending.append(tg.create_task(self._batch(problem, ctx, started, sizes)))
                    started += 1
                if not pending:
                    break
                span, got = await pending.popleft()
                self._absorb(prog, span, got)
                if prog.decided:
                    break
            for task in pending:  # decided: the batches not yet counted are not needed
                if task.cancel():
                    prog.cancelled += 1
                else:  # finished (and paid for) but started after the deciding batch
                    prog.discarded += 1
        prog.stopped_early = prog.decided and (started < len(sizes) or bool(pending))
        return prog

    async def _batch(
        self, problem: Problem, ctx: RunContext, index: int, sizes: list[int]
    ) -> tuple[Span, Collected]:
        """One batch of votes inside its own ``batch`` span (backend calls nest under it)."""
        size = sizes[index]
        with ctx.trace.span("batch", kind="step", index=index, size=size) as span:
            try:
                if self.inner is not None:
                    got = await run_children(problem, ctx, self.inner, size)
                else:
                    request = self.config.request(problem, n=size)
                    got = await sample(ctx, request, self.config.backend)
            except asyncio.CancelledError:
                span.set(cancelled=True)
                raise
            span.set(returned=len(got.candidates), failed=len(got.candidates) - len(got.ok))
            if got.error:
                span.set(error=got.error)
            if got.budget_exhausted:
                span.set(budget_exhausted=True)
        return span, got

    def _absorb(self, prog: _Progress, span: Span, got: Collected) -> None:
        """Add a finished batch's votes and apply the stopping rule."""
        prog.candidates.extend(got.candidates)
        prog.batches += 1
        prog.budget_exhausted = prog.budget_exhausted or got.budget_exhausted
        prog.error = prog.error or got.error
        v = vote(prog.candidates)
        lead, second = top_two(v.weights)
        prog.posterior = prob_lead_beats_second(lead, second)
        prog.decided = prog.posterior >= self.config.threshold
        span.set(
            leader=prog.candidates[v.groups[v.winner][0]].answer if v.winner is not None else None,
            lead_votes=lead,
            runner_up_votes=second,
            posterior=round(prog.posterior, 6),
            decided=prog.decided,
        )
