"""``repeated_sampling``: N independent samples (Large Language Monkeys, Brown et al. 2024).

The answer is chosen by a selection verifier (majority vote by default). When the problem has a
reference answer, the result also reports how many samples were correct and the coverage curve:
the unbiased pass@k for k = 1, 2, 4, ... N.
"""

from __future__ import annotations

from pydantic import Field

from orchestrator.answers import answers_equivalent
from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.metrics import coverage_curve
from orchestrator.registry import strategies
from orchestrator.types import Problem, Result
from strategies.sampling import NSamplesConfig, NSamplesStrategy, base_details, score_and_pick
from verifiers.base import VerifierSpec, build_verifier


class RepeatedSamplingConfig(NSamplesConfig):
    """``repeated_sampling`` options."""

    n: int = Field(16, ge=1, le=1024, description="number of samples")
    select: VerifierSpec = Field("majority_vote", description="verifier choosing the answer")


@strategies.register("repeated_sampling")
class RepeatedSampling(NSamplesStrategy):
    """Sample N; select with a verifier; report pass@k when a reference is known."""

    Config = RepeatedSamplingConfig

    def __init__(self, config: object = None, **kwargs: object) -> None:
        super().__init__(config, **kwargs)
        self.select = build_verifier(self.config.select)

    def needs(self) -> Capabilities:
        return self.requires if self.inner is not None else self.select.needs

    def wants_logprobs(self) -> bool:
        return self.select.needs.logprobs

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        got = await self.collect(problem, ctx)
        cands = got.candidates
        scored, best = await score_and_pick(self.select, problem, got, ctx)
        details = base_details(got)
        if problem.reference is not None and cands:
            correct = sum(answers_equivalent(c.answer, problem.reference) for c in got.ok)
            details["correct"] = correct
            details["pass_at_k"] = {
                str(k): round(v, 6) for k, v in coverage_curve(len(cands), correct).items()
            }
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=scored,
            budget_exhausted=got.budget_exhausted,
            details=details,
        )
