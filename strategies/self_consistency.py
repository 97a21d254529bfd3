"""``self_consistency``: majority (or weighted) vote over N answers (Wang et al. 2023).

Plain: sample N at temperature > 0, group equivalent answers, return the largest group.
Weighted: a verifier scores every candidate; a group weighs the sum of its scores; the answer is
the best-scored candidate of the heaviest group. Confidence = winning weight / total weight.
With ``inner``, the N votes are the answers of N runs of a child strategy.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trust import tuning
from orchestrator.types import Problem, Result, Score, ScoredCandidate
from strategies.sampling import NSamplesConfig, NSamplesStrategy, base_details
from strategies.voting import vote
from verifiers.base import VerifierSpec, build_verifier


class SelfConsistencyConfig(NSamplesConfig):
    """``self_consistency`` options."""

    verifier: VerifierSpec | None = Field(
        None,
        description="weigh votes by this verifier's scores (None = one vote each)",
        json_schema_extra=tuning(nested="verifier"),
    )


@strategies.register("self_consistency")
class SelfConsistency(NSamplesStrategy):
    """Majority vote over extracted answers; weighted by a verifier when one is set."""

    Config = SelfConsistencyConfig

    def __init__(self, config: object = None, **kwargs: object) -> None:
        super().__init__(config, **kwargs)
        spec = self.config.verifier
        self.verifier = None if spec is None else build_verifier(spec)

    def backend_needs(self) -> Capabilities:
        if self.verifier is None or self.inner is not None:
            return self.requires
        return self.verifier.candidate_needs

    def verifiers(self) -> list[Any]:
        return [self.verifier] if self.verifier is not None else []

    def wants_logprobs(self) -> bool:
        return self.verifier is not None and self.verifier.candidate_needs.logprobs

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        got = await self.collect(problem, ctx)
        cands = got.candidates
        scores: list[Score] | None = None
        if self.verifier is not None and got.ok:
            scores = await self.verifier(problem, cands, ctx)
        v = vote(cands, [s.value for s in scores] if scores else None)
        best = None
        if v.winner is not None:
            group = v.groups[v.winner]
            best = max(group, key=lambda i: (scores[i].value if scores else 0.0, -i))
        details = base_details(got)
        details.update(votes=v.table(cands), confidence=round(v.confidence, 6))
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=[
                ScoredCandidate(candidate=c, scores=[scores[i]] if scores else [])
                for i, c in enumerate(cands)
            ],
            budget_exhausted=got.budget_exhausted,
            details=details,
        )
