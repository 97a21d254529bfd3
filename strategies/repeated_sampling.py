"""``repeated_sampling``: N independent samples (Large Language Monkeys, Brown et al. 2024).

Best-of-N with a different emphasis: the answer is chosen by a verifier (majority vote by
default), and when the problem has a reference answer the result also reports how many samples
were correct and the coverage curve, the unbiased pass@k for k = 1, 2, 4, ... N.
"""

from __future__ import annotations

from pydantic import Field

from orchestrator.answers import answers_equivalent
from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.stats import coverage_curve
from orchestrator.trust import tuning
from orchestrator.types import Problem, Result
from strategies.best_of_n import BestOfN, BestOfNConfig
from verifiers.base import VerifierSpec


class RepeatedSamplingConfig(BestOfNConfig):
    """``repeated_sampling`` options."""

    n: int = Field(16, ge=1, le=1024, description="number of samples", json_schema_extra=tuning())
    verifier: VerifierSpec = Field(
        "majority_vote",
        description="verifier choosing the answer",
        json_schema_extra=tuning(nested="verifier"),
    )


@strategies.register("repeated_sampling")
class RepeatedSampling(BestOfN):
    """Sample N; select with a verifier; report pass@k when a reference is known."""

    Config = RepeatedSamplingConfig

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        result = await super().run(problem, ctx)
        live = [sc.candidate for sc in result.candidates if not sc.candidate.failed]
        if problem.reference is None or not result.candidates:
            return result
        correct = sum(answers_equivalent(c.answer, problem.reference) for c in live)
        curve = coverage_curve(len(result.candidates), correct)
        details = {
            **result.details,
            "correct": correct,
            "pass_at_k": {str(k): round(v, 6) for k, v in curve.items()},
        }
        return result.model_copy(update={"details": details})
