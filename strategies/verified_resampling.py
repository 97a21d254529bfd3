"""``verified_resampling``: resample until an imperfect verifier accepts, at most K* times.

Stroebl, Kapoor, Narayanan 2024, "Inference Scaling fLaws: The Limits of LLM Resampling with
Imperfect Verifiers" (ALGORITHMS.md, "Optimal number of samples with an imperfect verifier").

The model: a verifier has completeness ``c = P(accept | correct)`` and soundness
``s = P(reject | incorrect)``. A true accept is worth +1, a false accept ``-lambda``
(``wrong_answer_cost``), abstaining 0. Tasks come in types ``t`` with single-sample accuracy
``r_t`` and prior weight ``pi_t`` (``task_types``; or one ``accuracy`` r). Allowing K attempts
is worth ``R(K) = sum_{k=1..K} sum_t pi_t * beta_t^(k-1) * (c*r_t - lambda*(1-s)*(1-r_t))``,
where ``beta_t = (1-c)*r_t + s*(1-r_t)`` is the chance that one attempt is rejected. Resampling
forever converges to accuracy ``c*r / (c*r + (1-s)*(1-r))`` (``limit_accuracy``).

Contract and choices:

- K = ``k`` when set (no abstention then); otherwise K* = argmax R(K) over 1..``max_k`` (ties
  within 1e-12 go to the smaller K: the same value for less compute). When max R <= 0 the run
  abstains without any backend call (answer None, ``details.abstained``): at R = 0 answering is
  worth no more than abstaining and still costs compute, hence ``<=`` where the paper says ``<``.
- Without ``task_types`` or ``accuracy`` the prior is the paper's worked example (easy r=0.87,
  hard r=0.13, weights 0.58 / 0.42, with c=1, s=0.75); weights are normalised to sum to 1.
- Attempts are drawn ``batch_size`` at a time (default 1: strictly sequential, as in the
  paper; a larger batch is one request with ``n`` and may sample past the first acceptance,
  but the earliest accepted sample of the batch is returned, so the answer's distribution is
  unchanged). With ``inner``, an attempt is one run of the child strategy.
- A sample is accepted when it has an extracted answer and its score is >= ``accept_threshold``
  and the verifier really judged it (a score whose details say ``fallback``,
  ``budget_exhausted`` or ``error`` never accepts). Failed samples are skipped; two attempts in
  a row that end in a backend error stop the run.
- No acceptance within K (or the budget ran out first): ``on_exhausted="abstain"`` (default)
  returns no answer, since in this model an unaccepted answer is worth less than abstaining;
  ``"best"`` returns the best-scored live candidate. Every sample is in ``Result.candidates``.
- Trace and details: K, its source, R(K) for K=1..min(max_k, 20) (``value_table``), the
  expected value R(K), the parameters, the prior-weighted limit accuracy; per run the samples,
  ``accepted_at`` (1-based, among the samples), ``abstained`` and ``reason``. Each batch of
  attempts is a ``step`` span named ``attempt`` (its backend and verifier spans inside).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.errors import BudgetExhausted
from orchestrator.registry import strategies
from orchestrator.trust import tuning
from orchestrator.types import Problem, Result, Score, ScoredCandidate
from strategies.base import InnerStrategy, SamplingConfig, StrategySpec, runs_of
from strategies.sampling import Collected, run_children, sample
from verifiers.base import VerifierSpec, build_verifier

TaskPrior = Sequence[tuple[float, float]]
"""Task types as ``(accuracy r_t, weight pi_t)`` pairs."""

PAPER_TASK_TYPES: tuple[tuple[float, float], ...] = ((0.87, 0.58), (0.13, 0.42))
"""The paper's worked example: easy and hard tasks, ``(accuracy, weight)``."""

TABLE_SIZE = 20
"""How many R(K) values the trace reports."""

_TIE = 1e-12
_UNJUDGED = ("fallback", "budget_exhausted", "error")


def value_increments(
    max_k: int, completeness: float, soundness: float, wrong_answer_cost: float, types: TaskPrior
) -> list[float]:
    """``R(k) - R(k-1)`` for k = 1..max_k: the value the k-th allowed attempt adds."""
    c, s, lam = completeness, soundness, wrong_answer_cost
    terms = [(w, (1 - c) * r + s * (1 - r), c * r - lam * (1 - s) * (1 - r)) for r, w in types]
    return [sum(w * beta**k * gain for w, beta, gain in terms) for k in range(max_k)]


def value_of_k(
    k: int, completeness: float, soundness: float, wrong_answer_cost: float, types: TaskPrior
) -> float:
    """R(K): the expected value of allowing ``k`` attempts (weights used as given)."""
    return sum(value_increments(k, completeness, soundness, wrong_answer_cost, types))


def optimal_k(
    completeness: float,
    soundness: float,
    wrong_answer_cost: float,
    types: TaskPrior,
    max_k: int = 64,
) -> tuple[int, float, list[float]]:
    """``(K*, R(K*), [R(1), ..., R(max_k)])``; ties go to the smaller K."""
    incs = value_increments(max_k, completeness, soundness, wrong_answer_cost, types)
    table = list(itertools.accumulate(incs))
    best = max(table)
    k = next(i for i, v in enumerate(table, start=1) if v >= best - _TIE)
    return k, table[k - 1], table


def limit_accuracy(c: float, s: float, r: float) -> float:
    """Accuracy of resampling until acceptance as K -> infinity: ``c*r / (c*r + (1-s)*(1-r))``.

    0.0 when the verifier accepts nothing (both terms 0): no answer is ever returned.
    """
    accept = c * r + (1 - s) * (1 - r)
    return c * r / accept if accept > 0 else 0.0


def accepts(score: Score, threshold: float) -> bool:
    """Whether ``score`` is a real judgement at or above ``threshold``."""
    unjudged = any(score.details.get(key) for key in _UNJUDGED)
    return score.value >= threshold and not unjudged


class TaskType(BaseModel):
    """One task type of the prior: single-sample accuracy and prior weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: float = Field(
        ge=0.0, le=1.0, description="single-sample accuracy r_t", json_schema_extra=tuning()
    )
    weight: float = Field(
        ge=0.0, description="prior weight pi_t (normalised to sum 1)", json_schema_extra=tuning()
    )


class VerifiedResamplingConfig(SamplingConfig):
    """``verified_resampling`` options (defaults: the paper's worked example, lambda = 1)."""

    verifier: VerifierSpec = Field(
        "self_eval",
        description="the imperfect verifier",
        json_schema_extra=tuning(nested="verifier"),
    )
    accept_threshold: float = Field(
        0.5, description="accept when score >= this", json_schema_extra=tuning()
    )
    completeness: float = Field(
        1.0, ge=0.0, le=1.0, description="c = P(accept | correct)", json_schema_extra=tuning()
    )
    soundness: float = Field(
        0.75, ge=0.0, le=1.0, description="s = P(reject | incorrect)", json_schema_extra=tuning()
    )
    wrong_answer_cost: float = Field(
        1.0, ge=0.0, description="lambda: cost of a false accept", json_schema_extra=tuning()
    )
    accuracy: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="single-sample accuracy r (instead of task_types)",
        json_schema_extra=tuning(),
    )
    task_types: list[TaskType] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="prior over task types (None: the paper's example); the K* search costs "
        "max_k x types steps, hence at most 64",
        json_schema_extra=tuning(),
    )
    max_k: int = Field(
        64, ge=1, le=1024, description="largest K considered", json_schema_extra=tuning()
    )
    k: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="fixed K (skips the optimisation)",
        json_schema_extra=tuning(),
    )
    batch_size: int = Field(
        1, ge=1, le=64, description="attempts sampled per request", json_schema_extra=tuning()
    )
    on_exhausted: Literal["abstain", "best"] = Field(
        "abstain",
        description="no acceptance within K: abstain, or return the best-scored",
        json_schema_extra=tuning(),
    )
    inner: StrategySpec | None = Field(
        None,
        description="a child strategy whose runs are the attempts, instead of samples",
        json_schema_extra=tuning(nested="strategy"),
    )

    @model_validator(mode="after")
    def _one_prior(self) -> VerifiedResamplingConfig:
        if self.accuracy is not None and self.task_types is not None:
            raise ValueError("set either `accuracy` or `task_types`, not both")
        if self.task_types is not None and sum(t.weight for t in self.task_types) <= 0:
            raise ValueError("task_types: the weights must sum to more than 0")
        return self

    def prior(self) -> list[tuple[float, float]]:
        """The task types as ``(accuracy, weight)`` pairs, weights normalised to sum 1."""
        if self.accuracy is not None:
            return [(self.accuracy, 1.0)]
        pairs = [(t.accuracy, t.weight) for t in self.task_types or []] or list(PAPER_TASK_TYPES)
        total = sum(w for _, w in pairs)
        return [(r, w / total) for r, w in pairs]


@dataclass
class Plan:
    """The K chosen for a run and why (pure function of the config)."""

    k: int
    value: float
    abstain: bool
    details: dict[str, Any]


@dataclass
class Attempts:
    """What the resampling loop of one run gathered (local to the run)."""

    scored: list[ScoredCandidate] = field(default_factory=list)
    accepted: int | None = None
    budget_exhausted: bool = False
    error: str | None = None


@strategies.register("verified_resampling")
class VerifiedResampling(InnerStrategy):
    """Resample until the verifier accepts, at most K* attempts (see the module docstring)."""

    Config = VerifiedResamplingConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.verifier = build_verifier(self.config.verifier)

    def verifiers(self) -> list[Any]:
        return [self.verifier]

    def max_samples(self) -> int | None:
        """At most K attempts (``k``, else ``max_k``), in batches of ``batch_size``, each batch
        scored by the verifier."""
        k = self.config.k or self.config.max_k
        attempts = runs_of(k, self.inner)
        if attempts is None:
            return None
        batch = min(self.config.batch_size, k)
        return attempts + math.ceil(k / batch) * self.verifier.max_samples(batch)

    def backend_needs(self) -> Capabilities:
        return self.requires if self.inner is not None else self.verifier.candidate_needs

    def plan(self) -> Plan:
        """K (the override or K*), R(K), whether to abstain, and the numbers behind it."""
        cfg = self.config
        prior = cfg.prior()
        params = (cfg.completeness, cfg.soundness, cfg.wrong_answer_cost, prior)
        k_star, best, table = optimal_k(*params, max_k=cfg.max_k)
        k = cfg.k if cfg.k is not None else k_star
        value = value_of_k(k, *params)
        limit = sum(w * limit_accuracy(cfg.completeness, cfg.soundness, r) for r, w in prior)
        details = {
            "k": k,
            "k_source": "config" if cfg.k is not None else "optimal",
            "k_star": k_star,
            "expected_value": round(value, 6),
            "value_table": {str(i): round(v, 6) for i, v in enumerate(table[:TABLE_SIZE], 1)},
            "limit_accuracy": round(limit, 6),
            "parameters": {
                "completeness": cfg.completeness,
                "soundness": cfg.soundness,
                "wrong_answer_cost": cfg.wrong_answer_cost,
                "task_types": [{"accuracy": r, "weight": round(w, 6)} for r, w in prior],
                "accept_threshold": cfg.accept_threshold,
            },
        }
        return Plan(k=k, value=value, abstain=cfg.k is None and best <= 0.0, details=details)

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        plan = self.plan()
        if plan.abstain:
            details = {**plan.details, "samples": 0, "failed": 0, "accepted_at": None}
            details.update(abstained=True, reason="no_positive_value")
            return Result(answer=None, details=details)
        got = await self.resample(problem, ctx, plan.k)
        return self.result(plan, got)

    async def resample(self, problem: Problem, ctx: RunContext, k: int) -> Attempts:
        """Draw attempts in batches until one is accepted, K are used, or the budget ends."""
        out = Attempts()
        errors = 0
        for start in range(0, k, self.config.batch_size):
            want = min(self.config.batch_size, k - start)
            with ctx.trace.span("attempt", kind="step", first=start + 1, n=want) as span:
                got = await self.draw(problem, ctx, want)
                scored, hit = await self.judge(problem, ctx, got)
                span.set(
                    samples=len(scored),
                    scores=[sc.score for sc in scored],
                    accepted=hit is not None,
                )
            if hit is not None:
                out.accepted = len(out.scored) + hit
            out.scored.extend(scored)
            out.budget_exhausted = got.budget_exhausted or ctx.meter.exhausted
            errors = errors + 1 if got.error and not got.ok else 0
            out.error = got.error or out.error
            if out.accepted is not None or out.budget_exhausted or errors >= 2:
                break
        return out

    async def draw(self, problem: Problem, ctx: RunContext, n: int) -> Collected:
        """``n`` attempts: samples from the backend, or runs of the child strategy."""
        if self.inner is not None:
            return await run_children(problem, ctx, self.inner, n)
        logprobs = self.verifier.candidate_needs.logprobs
        request = self.config.request(problem, n=n, logprobs=logprobs)
        return await sample(ctx, request, self.config.backend)

    async def judge(
        self, problem: Problem, ctx: RunContext, got: Collected
    ) -> tuple[list[ScoredCandidate], int | None]:
        """Score the live candidates; the index of the first accepted one (None if none).

        A verifier that raises BudgetExhausted leaves the batch unscored (nothing accepted).
        """
        live = got.ok
        try:
            scores = iter(await self.verifier(problem, live, ctx) if live else [])
        except BudgetExhausted:  # the meter is marked exhausted: the loop stops after this
            return [ScoredCandidate(candidate=c) for c in got.candidates], None
        scored = [
            ScoredCandidate(candidate=c, scores=[] if c.failed else [next(scores)])
            for c in got.candidates
        ]
        threshold = self.config.accept_threshold
        hit = next(
            (
                i
                for i, sc in enumerate(scored)
                if sc.scores
                and sc.candidate.answer is not None
                and accepts(sc.scores[0], threshold)
            ),
            None,
        )
        return scored, hit

    def result(self, plan: Plan, got: Attempts) -> Result:
        """The accepted candidate, or the ``on_exhausted`` fallback, with the details."""
        pick = got.accepted
        details: dict[str, Any] = {**plan.details, "samples": len(got.scored)}
        details["failed"] = sum(sc.candidate.failed for sc in got.scored)
        details["accepted_at"] = None if pick is None else pick + 1
        details["abstained"], details["reason"] = False, None
        if got.error:
            details["error"] = got.error
        if pick is None:
            details["reason"] = "budget_exhausted" if got.budget_exhausted else "none_accepted"
            if self.config.on_exhausted == "best":
                pick = best_scored(got.scored)
            details["abstained"] = pick is None
        chosen = got.scored[pick].candidate if pick is not None else None
        return Result(
            answer=chosen.answer if chosen is not None else None,
            candidate=chosen,
            candidates=got.scored,
            budget_exhausted=got.budget_exhausted,
            details=details,
        )


def best_scored(scored: Sequence[ScoredCandidate]) -> int | None:
    """Index of the best live candidate, or None: answered first, then the higher score
    (unscored last), then the earlier one."""
    live = [i for i, sc in enumerate(scored) if not sc.candidate.failed]
    if not live:
        return None

    def rank(i: int) -> tuple[bool, float, int]:
        value = scored[i].score
        return scored[i].candidate.answer is not None, -math.inf if value is None else value, -i

    return max(live, key=rank)
