"""Built-in verifiers: ``reference_match`` (oracle), ``majority_vote``, ``mean_logprob``."""

from __future__ import annotations

import math

from pydantic import Field

from orchestrator.answers import answers_equivalent, group_answers
from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.registry import verifiers
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Score
from verifiers.base import Verifier, VerifierConfig


@verifiers.register("reference_match")
class ReferenceMatch(Verifier):
    """Oracle for evaluation: 1.0 when the candidate's answer equals the problem's reference.

    Equivalence is ``orchestrator.answers.answers_equivalent`` (math-verify with a numeric
    fallback). Raises ConfigError when the problem has no reference answer.
    """

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        if problem.reference is None:
            raise ConfigError(
                "verifier 'reference_match' needs a problem with a reference answer "
                "(Problem.reference / --reference)"
            )
        return [
            Score(value=float(answers_equivalent(c.answer, problem.reference)), verifier=self.name)
            for c in candidates
        ]


@verifiers.register("majority_vote")
class MajorityVote(Verifier):
    """Share of the answered candidates whose answer is equivalent to this one's.

    A candidate without an answer (or a failed one) scores 0.
    """

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        answers = [None if c.failed else c.answer for c in candidates]
        answered = sum(a is not None for a in answers) or 1
        values = [0.0] * len(candidates)
        for group in group_answers(answers):
            for i in group:
                values[i] = len(group) / answered
        return [
            Score(value=v, verifier=self.name, details={"votes": round(v * answered)})
            for v in values
        ]


class MeanLogprobConfig(VerifierConfig):
    """``mean_logprob`` options."""

    length_floor: int = Field(
        1,
        ge=1,
        description="candidates with fewer generated tokens than this score 0",
        json_schema_extra=tuning(),
    )


@verifiers.register("mean_logprob")
class MeanLogprob(Verifier):
    """Confidence as the inverse perplexity: ``exp(mean token logprob)`` in (0, 1].

    Needs candidates sampled with logprobs; a candidate without them scores 0.
    """

    Config = MeanLogprobConfig
    candidate_needs = Capabilities(logprobs=True)

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        out = []
        for c in candidates:
            mean = c.mean_logprob()
            ok = mean is not None and not c.failed and c.tokens >= self.config.length_floor
            value = math.exp(mean) if ok and mean is not None else 0.0
            out.append(Score(value=value, verifier=self.name, details={"mean_logprob": mean}))
        return out
