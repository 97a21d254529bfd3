"""``best_of_n``: N candidates scored by a verifier; the best-scored one wins.

With ``inner``, the N candidates are the chosen candidates of N runs of a child strategy
(e.g. best-of-N over self-consistency runs). Ties break towards the earlier candidate.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trust import tuning
from orchestrator.types import Problem, Result
from strategies.sampling import NSamplesConfig, NSamplesStrategy, base_details, score_and_pick
from verifiers.base import VerifierSpec, build_verifier


class BestOfNConfig(NSamplesConfig):
    """``best_of_n`` options."""

    verifier: VerifierSpec = Field(
        "mean_logprob",
        description="the verifier that ranks",
        json_schema_extra=tuning(nested="verifier"),
    )


@strategies.register("best_of_n")
class BestOfN(NSamplesStrategy):
    """Sample N, score with a verifier, return the argmax."""

    Config = BestOfNConfig

    def __init__(self, config: object = None, **kwargs: object) -> None:
        super().__init__(config, **kwargs)
        self.verifier = build_verifier(self.config.verifier)

    def backend_needs(self) -> Capabilities:
        return self.requires if self.inner is not None else self.verifier.candidate_needs

    def verifiers(self) -> list[Any]:
        return [self.verifier]

    def wants_logprobs(self) -> bool:
        return self.verifier.candidate_needs.logprobs

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        got = await self.collect(problem, ctx)
        cands = got.candidates
        scored, best = await score_and_pick(self.verifier, problem, got, ctx)
        details = base_details(got)
        if best is not None:
            details["best_score"] = scored[best].score
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=scored,
            budget_exhausted=got.budget_exhausted,
            details=details,
        )
