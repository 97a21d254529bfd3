"""``single``: one sample, its extracted answer. The baseline every other strategy beats."""

from __future__ import annotations

from pydantic import Field

from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trust import tuning
from orchestrator.types import Problem, Result, ScoredCandidate
from strategies.base import SamplingConfig, Strategy, search_hint
from strategies.sampling import base_details, sample


class SingleConfig(SamplingConfig):
    """``single`` options: greedy by default."""

    temperature: float = Field(
        0.0, ge=0.0, le=2.0, json_schema_extra=search_hint(0.0, 1.2, step=0.1)
    )
    logprobs: bool = Field(
        False, description="ask the backend for per-token logprobs", json_schema_extra=tuning()
    )


@strategies.register("single")
class Single(Strategy):
    """Sample once and return the extracted answer."""

    Config = SingleConfig

    def max_samples(self) -> int:
        """One sample."""
        return 1

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        request = self.config.request(problem, n=1, logprobs=self.config.logprobs)
        got = await sample(ctx, request, self.config.backend)
        best = got.ok[0] if got.ok else None
        return Result(
            answer=best.answer if best else None,
            candidate=best,
            candidates=[ScoredCandidate(candidate=c) for c in got.candidates],
            budget_exhausted=got.budget_exhausted,
            details=base_details(got),
        )
