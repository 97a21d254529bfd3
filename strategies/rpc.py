"""``rpc``: Reasoning-pruning Perplexity Consistency (Zhou et al. 2025).

Zhou et al., "Bridging Internal Probability and Self-Consistency for Effective and Efficient LLM
Reasoning" (2025). Sample N reasoning paths with token logprobs, then:

1. Path probability: ``p_i = exp(mean token logprob)`` (inverse perplexity).
2. Reasoning pruning: fit a two-component Weibull mixture to the ``p_i`` by maximum likelihood
   (L-BFGS-B; weight in [0.2, 0.8], shapes and scales >= 0.01; start (0.5, 1, 1, 1.5, 2) for
   (weight, shape1, scale1, shape2, scale2)). The component with the larger mean
   ``scale * Gamma(1 + 1/shape)`` is "high". Path i is pruned only if its posterior of "high" is
   below ``prune_threshold`` (0.5) AND ``p_i < mean(p)``. Skipped (perplexity consistency alone)
   when fewer than ``min_paths_for_pruning`` paths vote or the fit fails.
3. Perplexity consistency: group equivalent answers; a group scores the sum of ``p`` over its
   distinct (by completion text) unpruned paths. The best group wins; confidence = its share.

Paths that vote (and are fitted) are the live candidates with an extracted answer and logprobs;
the others are reported but ignored, so pruning never removes every answer (paths with
``p_i >= mean(p)`` are never pruned). With ``inner``, each child run's chosen candidate is a path
and its own logprobs give ``p``: use a child that returns logprobs (e.g. ``single`` with
``logprobs: true``); a run where no answered path has logprobs ends with no answer and an error.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import Field
from scipy.optimize import minimize

from orchestrator.answers import group_answers
from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Result, Score, ScoredCandidate
from strategies.sampling import NSamplesConfig, NSamplesStrategy, base_details

Array = NDArray[np.float64]

WEIBULL_START = (0.5, 1.0, 1.0, 1.5, 2.0)
WEIBULL_BOUNDS = [(0.2, 0.8), (0.01, None), (0.01, None), (0.01, None), (0.01, None)]
_P_FLOOR = 1e-12


@dataclass(frozen=True)
class WeibullMixture:
    """``weight * Weibull(shape1, scale1) + (1 - weight) * Weibull(shape2, scale2)``."""

    weight: float
    shape1: float
    scale1: float
    shape2: float
    scale2: float
    nll: float = math.nan

    @property
    def means(self) -> tuple[float, float]:
        """The two component means ``scale * Gamma(1 + 1/shape)``."""
        return (
            self.scale1 * math.gamma(1 + 1 / self.shape1),
            self.scale2 * math.gamma(1 + 1 / self.shape2),
        )

    @property
    def high(self) -> int:
        """Which component (1 or 2) has the larger mean; ties go to component 1."""
        m1, m2 = self.means
        return 1 if m1 >= m2 else 2

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready parameters (rounded), with the means and the index of "high"."""
        m1, m2 = self.means
        values = dict(
            weight=self.weight, shape1=self.shape1, scale1=self.scale1, shape2=self.shape2,
            scale2=self.scale2, mean1=m1, mean2=m2, nll=self.nll,
        )  # fmt: skip
        return {**{k: round(float(v), 6) for k, v in values.items()}, "high": self.high}


def path_probabilities(candidates: Sequence[Candidate]) -> list[float]:
    """``exp(mean token logprob)`` per candidate; 0.0 for failed ones or ones without logprobs."""
    out = []
    for c in candidates:
        mean = None if c.failed else c.mean_logprob()
        out.append(0.0 if mean is None else math.exp(mean))
    return out


def _component(x: Array, logx: Array, shape: float, scale: float) -> tuple[Array, Array, Array]:
    """Weibull log-density at ``x`` and its derivatives by shape and by scale."""
    logz = logx - math.log(scale)
    zk = np.exp(shape * logz)
    logpdf = math.log(shape) - math.log(scale) + (shape - 1) * logz - zk
    return logpdf, 1 / shape + logz - zk * logz, (shape / scale) * (zk - 1)


def _log_parts(theta: Sequence[float] | Array, x: Array) -> tuple[Array, Array, list[Array]]:
    """Weighted component log-densities ``(log w + log f1, log(1-w) + log f2)``, derivatives."""
    w, k1, l1, k2, l2 = theta
    logx = np.log(x)
    lf1, dk1, dl1 = _component(x, logx, k1, l1)
    lf2, dk2, dl2 = _component(x, logx, k2, l2)
    return math.log(w) + lf1, math.log1p(-w) + lf2, [dk1, dl1, dk2, dl2]


def _nll_and_grad(theta: Array, x: Array) -> tuple[float, Array]:
    """Negative log-likelihood of the mixture and its gradient (for L-BFGS-B)."""
    a, b, (dk1, dl1, dk2, dl2) = _log_parts(theta, x)
    lmix = np.logaddexp(a, b)
    r1, r2 = np.exp(a - lmix), np.exp(b - lmix)
    w = theta[0]
    grad = -np.array(
        [
            np.sum(r1 / w - r2 / (1 - w)),
            np.sum(r1 * dk1),
            np.sum(r1 * dl1),
            np.sum(r2 * dk2),
            np.sum(r2 * dl2),
        ]
    )
    return float(-np.sum(lmix)), grad


def fit_weibull_mixture(p: Sequence[float]) -> WeibullMixture | None:
    """Fit a two-component Weibull mixture to ``p`` by maximum likelihood (L-BFGS-B).

    Bounds: weight in [0.2, 0.8], shapes and scales >= 0.01; start ``WEIBULL_START``. Values
    are floored at 1e-12. Returns None when there are fewer than two distinct values, or when
    the optimiser does not converge or ends on a non-finite likelihood.
    """
    x = np.maximum(np.asarray(p, dtype=np.float64), _P_FLOOR)
    if x.size < 2 or not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return None
    with np.errstate(all="ignore"):
        res = minimize(
            _nll_and_grad,
            np.array(WEIBULL_START),
            args=(x,),
            jac=True,
            method="L-BFGS-B",
            bounds=WEIBULL_BOUNDS,
        )
    if not res.success or not np.isfinite(res.fun) or not np.all(np.isfinite(res.x)):
        return None
    w, k1, l1, k2, l2 = (float(v) for v in res.x)
    return WeibullMixture(w, k1, l1, k2, l2, nll=float(res.fun))


def high_posterior(mixture: WeibullMixture, p: Sequence[float]) -> list[float]:
    """Posterior probability that each ``p_i`` comes from the "high" component."""
    x = np.maximum(np.asarray(p, dtype=np.float64), _P_FLOOR)
    theta = (mixture.weight, mixture.shape1, mixture.scale1, mixture.shape2, mixture.scale2)
    with np.errstate(all="ignore"):
        a, b, _ = _log_parts(theta, x)
        high = a if mixture.high == 1 else b
        post = np.exp(high - np.logaddexp(a, b))
    return [float(v) if np.isfinite(v) else 0.0 for v in post]


def prune_mask(
    p: Sequence[float], mixture: WeibullMixture | None, threshold: float = 0.5
) -> list[bool]:
    """True for the paths to prune: posterior of "high" < ``threshold`` AND ``p_i < mean(p)``.

    Nothing is pruned without a mixture (pruning skipped).
    """
    if mixture is None or not p:
        return [False] * len(p)
    mean = sum(p) / len(p)
    post = high_posterior(mixture, p)
    return [q < threshold and pi < mean for q, pi in zip(post, p, strict=True)]


class Consistency(NamedTuple):
    """Outcome of perplexity consistency.

    Attributes:
        winner: index into ``groups`` of the best group, or None when no kept path answered.
        groups: indices of equivalent kept answers, in first-seen order.
        scores: per group, the sum of ``p`` over its distinct-by-text paths.
        confidence: the winner's share of the total score (0 when nothing answered).
    """

    winner: int | None
    groups: list[list[int]]
    scores: list[float]
    confidence: float


def perplexity_consistency(
    answers: Sequence[str | None],
    texts: Sequence[str],
    p: Sequence[float],
    keep_mask: Sequence[bool],
) -> Consistency:
    """Group the kept paths' answers and score each group by the ``p`` of its distinct paths.

    A completion text repeated within a group counts once (its first occurrence). Ties break
    towards the group with more paths, then the group seen first.
    """
    voting = [a if keep else None for a, keep in zip(answers, keep_mask, strict=True)]
    groups = group_answers(voting)
    scores = []
    for group in groups:
        distinct = {texts[i]: p[i] for i in reversed(group)}  # the first occurrence wins
        scores.append(sum(distinct.values()))
    if not groups:
        return Consistency(None, [], [], 0.0)
    winner = max(range(len(groups)), key=lambda j: (scores[j], len(groups[j]), -j))
    total = sum(scores)
    return Consistency(winner, groups, scores, scores[winner] / total if total > 0 else 0.0)


class RPCConfig(NSamplesConfig):
    """``rpc`` options (n = 8 paths at temperature 0.7 by default)."""

    prune: bool = Field(
        True, description="apply reasoning pruning (False = plain PC)", json_schema_extra=tuning()
    )
    min_paths_for_pruning: int = Field(
        8,
        ge=2,
        description="prune only with at least this many answered paths",
        json_schema_extra=tuning(),
    )
    prune_threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description='prune below this posterior of the "high" component',
        json_schema_extra=tuning(),
    )


@strategies.register("rpc")
class RPC(NSamplesStrategy):
    """Sample N paths with logprobs, prune unlikely ones, vote by perplexity consistency.

    Needs a backend with logprobs (refused before any call otherwise). Details: ``samples``,
    ``failed``, ``paths`` (answered paths with logprobs), ``pruning`` (``applied``,
    ``skipped: N<8``, ``skipped: fit failed`` or ``disabled``), ``pruned``, ``mixture`` (fitted
    parameters or None), ``scores`` (answer -> PC score), ``confidence`` and ``mean_p``. Each
    candidate is scored with its ``p``. The trace has a ``reasoning_pruning`` and a
    ``perplexity_consistency`` step span under the strategy span.
    """

    Config = RPCConfig
    requires = Capabilities(logprobs=True)

    def wants_logprobs(self) -> bool:
        return True

    def _pruning(self, p: list[float]) -> tuple[str, WeibullMixture | None]:
        """The pruning status word and the fitted mixture (None when pruning is skipped)."""
        if not self.config.prune:
            return "disabled", None
        if len(p) < self.config.min_paths_for_pruning:
            return f"skipped: N<{self.config.min_paths_for_pruning}", None
        mixture = fit_weibull_mixture(p)
        return ("applied", mixture) if mixture is not None else ("skipped: fit failed", None)

    async def _prune(self, p: list[float], ctx: RunContext) -> tuple[list[bool], dict[str, Any]]:
        """The prune flags of the voting paths, and what the step reports."""
        with ctx.trace.span("reasoning_pruning", kind="step", paths=len(p)) as span:
            status, mixture = await asyncio.to_thread(self._pruning, p)  # keep the loop free
            pruned = prune_mask(p, mixture, self.config.prune_threshold)
            info = dict(
                pruning=status, pruned=sum(pruned), mixture=mixture.to_dict() if mixture else None
            )
            span.set(**info)
        return pruned, info

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        got = await self.collect(problem, ctx)
        cands = got.candidates
        probs = path_probabilities(cands)
        voters = [i for i, c in enumerate(cands) if c.answer is not None and probs[i] > 0]
        p = [probs[i] for i in voters]
        pruned, info = await self._prune(p, ctx)
        with ctx.trace.span("perplexity_consistency", kind="step") as span:
            answers = [cands[i].answer for i in voters]
            texts = [cands[i].text for i in voters]
            pc = perplexity_consistency(answers, texts, p, [not x for x in pruned])
            labels = [str(answers[g[0]]) for g in pc.groups]
            table = {a: round(s, 6) for a, s in zip(labels, pc.scores, strict=True)}
            span.set(scores=table, confidence=round(pc.confidence, 6))
        best = None
        if pc.winner is not None:  # the most likely path of the winning group
            best = voters[max(pc.groups[pc.winner], key=lambda j: (p[j], -j))]
        details = base_details(got)
        details.update(paths=len(voters), **info, scores=table)
        details.update(confidence=round(pc.confidence, 6), mean_p=_mean(p))
        if not voters and any(c.answer is not None and not c.failed for c in cands):
            details.setdefault("error", "no answered path carried logprobs; rpc needs them")
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=_scored(cands, probs, dict(zip(voters, pruned, strict=True))),
            budget_exhausted=got.budget_exhausted,
            details=details,
        )


def _mean(p: Sequence[float]) -> float | None:
    return round(sum(p) / len(p), 6) if p else None


def _scored(
    cands: list[Candidate], probs: list[float], pruned: dict[int, bool]
) -> list[ScoredCandidate]:
    """Each candidate with its path probability (``voted``/``pruned`` flags in the details)."""
    out = []
    for i, c in enumerate(cands):
        info: dict[str, Any] = {"voted": i in pruned, "pruned": pruned.get(i, False)}
        scores = [] if c.failed else [Score(value=probs[i], verifier="rpc", details=info)]
        out.append(ScoredCandidate(candidate=c, scores=scores))
    return out
