"""Verifiers made of verifiers: ``weighted_sum``, ``all_of`` and ``first_success``.

Each combinator lists child verifier specs under ``verifiers`` (names or spec dicts, built with
``build_verifier``, so combinators nest). Children score batch-first: every child scores its
whole candidate list in one call, and independent children run concurrently. Child ``verifier``
spans nest inside the combinator's span. A combinator's ``candidate_needs`` is the union of what
its children need. An error in a child (ConfigError, BudgetExhausted, ...) propagates as itself,
not wrapped in an ExceptionGroup. ``details["scores"]`` lists each child's raw score, in config
order (``None`` where a child did not score the candidate).

Semantics (children are expected to score in [0, 1]; the results then stay in [0, 1]):

- ``weighted_sum``: ``sum(w_i * s_i) / sum(w_i)``. Weights are >= 0 with at least one > 0;
  children of weight 0 are not run at all (a search space can switch a child off that way).
- ``all_of``: the **minimum** of the child scores (fuzzy AND). Minimum rather than product: it
  stays on the children's scale, does not sink as children are added, and a candidate is
  exactly as good as its weakest check. With ``threshold``: 1.0 when every child scores
  >= threshold, else 0.0.
- ``first_success``: ordered gates with a tie-break. A candidate goes on to child ``i + 1`` only
  after succeeding at child ``i`` (score >= ``threshold``, default 1.0); the child where it
  first fails, or the last child, decides its rank within its tier. With ``k`` children, a
  candidate that succeeded at ``j`` children before being scored ``s`` by the deciding child
  scores ``(j + clamp(s, 0, 1)) / k``. So every candidate that gets further through the list
  outranks every one that stopped earlier, and later children only break ties among the
  candidates that reached them. "Unit tests, then a judge as tie-break"
  (``verifiers: [unit_tests, llm_judge]``) scores candidates that fail tests in [0, 0.5) by
  their test score, and candidates that pass all tests in [0.5, 1] by the judge, which is
  called only for them. Later children see only the candidates that reached them, so a
  batch-relative child (``majority_vote``) votes among those.

  Rejected alternative: "the first child whose score reaches the threshold decides". With
  ``[unit_tests, llm_judge]`` it gives every passing candidate the same 1.0 (no tie-break) and
  lets a judge score a failing candidate as high as a passing one.

Example::

    {"verifier": "first_success", "verifiers": [
        {"verifier": "unit_tests", "tests": ["assert add(1, 2) == 3"]},
        {"verifier": "llm_judge", "mode": "pointwise"}]}
    {"verifier": "weighted_sum", "verifiers": [
        {"verifier": "majority_vote", "weight": 2}, {"verifier": "mean_logprob"}]}
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.registry import verifiers
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Score
from verifiers.base import Verifier, VerifierConfig, VerifierSpec, build_verifier


def merge_needs(needs: Iterable[Capabilities]) -> Capabilities:
    """The union of capability needs: flags OR-ed, ``top_logprobs`` the maximum."""
    merged = Capabilities()
    for n in needs:
        merged = Capabilities(
            logprobs=merged.logprobs or n.logprobs,
            top_logprobs=max(merged.top_logprobs, n.top_logprobs),
            prefix_continuation=merged.prefix_continuation or n.prefix_continuation,
            native_n=merged.native_n or n.native_n,
        )
    return merged


async def score_concurrently(
    children: Sequence[Verifier], problem: Problem, candidates: list[Candidate], ctx: RunContext
) -> list[list[Score]]:
    """Each child scores all candidates, concurrently; re-raises a child's error unwrapped."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(problem, candidates, ctx)) for child in children]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


class Combinator(Verifier):
    """Base of the combinators: builds the children and merges their needs."""

    children: list[Verifier]

    def _build_children(self, specs: Sequence[VerifierSpec]) -> list[Verifier]:
        children = []
        for i, spec in enumerate(specs):
            try:
                children.append(build_verifier(spec))
            except ConfigError as exc:
                raise ConfigError(f"verifier {self.name!r}: verifiers[{i}]: {exc}") from None
        self.candidate_needs = merge_needs(c.candidate_needs for c in children)  # type: ignore[misc]
        return children

    def max_samples(self, candidates: int) -> int:
        """What every child draws (in the worst case each child scores every candidate)."""
        return sum(child.max_samples(candidates) for child in self.children)

    def backend_needs(self) -> list[tuple[str | None, Capabilities]]:
        """Every child's."""
        return [need for child in self.children for need in child.backend_needs()]

    async def aclose(self) -> None:
        """Close every child."""
        for child in self.children:
            await child.aclose()


class ChildrenConfig(VerifierConfig):
    """Options of combinators over a list of child verifiers."""

    verifiers: list[VerifierSpec] = Field(
        min_length=1,
        description="child verifier specs",
        json_schema_extra=tuning(nested="verifier"),
    )


class WeightedVerifier(BaseModel):
    """One child of ``weighted_sum``: a verifier spec and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verifier: VerifierSpec = Field(json_schema_extra=tuning(nested="verifier"))
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False, json_schema_extra=tuning())


class WeightedSumConfig(VerifierConfig):
    """``weighted_sum`` options."""

    verifiers: list[WeightedVerifier] = Field(
        min_length=1,
        description="children as {verifier: spec, weight: w >= 0}",
        json_schema_extra=tuning(),
    )

    @model_validator(mode="after")
    def _some_positive_weight(self) -> WeightedSumConfig:
        if not any(v.weight > 0 for v in self.verifiers):
            weights = [v.weight for v in self.verifiers]
            raise ValueError(f"at least one weight must be > 0, got weights {weights}")
        return self


@verifiers.register("weighted_sum")
class WeightedSum(Combinator):
    """Weighted mean of the children's scores; weight-0 children are skipped."""

    Config = WeightedSumConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        active = [v for v in self.config.verifiers if v.weight > 0]
        self.children = self._build_children([v.verifier for v in active])
        self._active = [i for i, v in enumerate(self.config.verifiers) if v.weight > 0]
        self._weights = [v.weight for v in active]

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        if not candidates:
            return []
        table = await score_concurrently(self.children, problem, candidates, ctx)
        total = sum(self._weights)
        out = []
        for c in range(len(candidates)):
            values = [scores[c].value for scores in table]
            raw: list[float | None] = [None] * len(self.config.verifiers)
            for i, v in zip(self._active, values, strict=True):
                raw[i] = v
            value = sum(w * v for w, v in zip(self._weights, values, strict=True)) / total
            out.append(Score(value=value, verifier=self.name, details={"scores": raw}))
        return out


class AllOfConfig(ChildrenConfig):
    """``all_of`` options."""

    threshold: float | None = Field(
        None,
        description="None: the minimum score; else 1.0 when every child is >= threshold",
        json_schema_extra=tuning(),
    )


class ListCombinator(Combinator):
    """A combinator whose children are exactly ``config.verifiers``, in order."""

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.children = self._build_children(self.config.verifiers)


@verifiers.register("all_of")
class AllOf(ListCombinator):
    """Minimum of the children's scores, or 0/1 against ``threshold``."""

    Config = AllOfConfig

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        if not candidates:
            return []
        table = await score_concurrently(self.children, problem, candidates, ctx)
        threshold = self.config.threshold
        out = []
        for c in range(len(candidates)):
            values = [scores[c].value for scores in table]
            details: dict[str, Any] = {"scores": values}
            if threshold is None:
                value = min(values)
            else:
                below = [i for i, v in enumerate(values) if v < threshold]
                value = 0.0 if below else 1.0
                if below:
                    details["failed"] = below
            out.append(Score(value=value, verifier=self.name, details=details))
        return out


class FirstSuccessConfig(ChildrenConfig):
    """``first_success`` options."""

    threshold: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="a child succeeds for a candidate at this score",
        json_schema_extra=tuning(),
    )


@verifiers.register("first_success")
class FirstSuccess(ListCombinator):
    """Ordered gates: later children rank only the candidates that succeeded at earlier ones."""

    Config = FirstSuccessConfig

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        k, threshold = len(self.children), self.config.threshold
        raw: list[list[float | None]] = [[None] * k for _ in candidates]
        final: list[Score | None] = [None] * len(candidates)
        alive = list(range(len(candidates)))
        for j, child in enumerate(self.children):
            if not alive:
                break
            scores = await child(problem, [candidates[i] for i in alive], ctx)
            survivors = []
            for i, s in zip(alive, scores, strict=True):
                raw[i][j] = s.value
                passed = s.value >= threshold
                if passed and j < k - 1:
                    survivors.append(i)
                    continue
                details = {"scores": list(raw[i]), "passed": j + int(passed)}
                value = (j + _clamp(s.value)) / k
                final[i] = Score(value=value, verifier=self.name, details=details)
            alive = survivors
        return [s for s in final if s is not None]
