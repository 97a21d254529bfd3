"""``cascade``: answer with a small model, defer to a large one when a deferral rule fires.

Language model cascades (Chen, Zaharia, Zou 2023, "FrugalGPT"; Gupta et al. 2024, "Language
Model Cascades: Token-level Uncertainty and Beyond") and Entropy Adaptive Decoding (Simonds
et al. 2025); see ALGORITHMS.md, "Cascades". The ``small`` child answers first; a rule measures
how sure it is; when the measure crosses ``threshold`` the ``large`` child answers instead.

Rules (``rule``), with the direction that defers:

- ``mean_logprob``: length-normalised log-likelihood of the small answer; defers when
  ``value < threshold``. Needs ``logprobs`` on the small backend.
- ``entropy_quantile``: the ``quantile``-th quantile of the per-token entropies, each computed
  over the renormalised top-``top_logprobs`` distribution of its position (a quantile rather
  than the sum, to avoid length bias); defers when ``value > threshold``. Needs ``logprobs``
  and ``top_logprobs >= top_logprobs`` on the small backend.
- ``self_eval``: a ``self_eval`` verifier's score of the small answer (default: the
  correctness probe ``P(Yes)`` run on the small child's backend); defers when
  ``value < threshold``.
- ``vote_disagreement``: the small child's vote confidence (``details["confidence"]``, the
  winning share, e.g. of ``self_consistency``); defers when ``value < threshold``.

A small answer without an extracted answer, or without a measurable signal, always defers.

Backends: each child spec carries its own backend, as every sampling strategy already has a
``backend`` field: ``{"small": {"strategy": "single", "backend": "small"}, "large": {"strategy":
"single", "backend": "big"}}`` (None = the run's default). The logprob rules read the token
distribution of the small answer, so they need ``small`` to be a ``single`` spec: the cascade
then samples it itself with that spec's sampling parameters plus the logprobs the rule needs
(``single`` alone asks for none). ``check`` verifies those needs on the small child's backend
before any call, and ``Strategy.check`` checks each child against its own backend.

Result: the answer of the side that answered; ``candidates`` holds both sides' candidates;
``details`` has ``deferred``, ``rule``, ``value``, ``threshold``, ``reason`` (``rule``,
``no_answer`` or ``no_signal``), ``answered_by``, ``small_answer``, ``large_answer`` and
``cost`` (prompt/completion tokens and calls spent by ``small``, ``decision`` and ``large``),
from which an evaluation derives the deferral rate and the cost saved. The trace has step
spans ``small``, ``defer decision`` and (when deferred) ``large``. When the budget runs out
after the small answer, the small answer is returned with ``budget_exhausted=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.backends.base import Backend, Capabilities
from orchestrator.context import RunContext
from orchestrator.errors import BudgetExhausted, CapabilityError, ConfigError
from orchestrator.registry import strategies
from orchestrator.trace import Span
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Result, ScoredCandidate
from strategies.base import Strategy, StrategyConfig, StrategySpec, build_strategy
from strategies.sampling import base_details, sample
from strategies.single import Single
from verifiers.base import Verifier, VerifierSpec, build_verifier

Rule = Literal["mean_logprob", "entropy_quantile", "self_eval", "vote_disagreement"]

DEFAULT_THRESHOLDS: dict[str, float] = {
    "mean_logprob": -0.5,
    "entropy_quantile": 1.0,
    "self_eval": 0.5,
    "vote_disagreement": 0.5,
}
"""Starting thresholds per rule (tune them: the deferral rate depends on model and task)."""

DEFER_ABOVE = frozenset({"entropy_quantile"})
"""Rules whose measure is an uncertainty (defer above the threshold); the others defer below."""

LOGPROB_RULES = frozenset({"mean_logprob", "entropy_quantile"})


def mean_logprob(candidate: Candidate) -> float | None:
    """Mean log-probability of the generated tokens; None for a failed or logprob-less sample."""
    return None if candidate.failed else candidate.mean_logprob()


def token_entropies(candidate: Candidate) -> list[float]:
    """Entropy (nats) of each position's top-k distribution, renormalised to sum to one.

    The sampled token counts when the backend left it out of ``top``; positions without
    ``top`` are skipped, so a sample without top logprobs gives an empty list.
    """
    out: list[float] = []
    for position in candidate.logprobs or []:
        if position.top is None:
            continue
        top = dict(position.top)
        top.setdefault(position.token, position.logprob)
        finite = [lp for lp in top.values() if lp > -math.inf]
        if not finite:
            continue
        peak = max(finite)
        weights = [math.exp(lp - peak) for lp in finite]
        total = sum(weights)
        out.append(-sum(w / total * math.log(w / total) for w in weights if w > 0.0))
    return out


def entropy_quantile(entropies: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile of ``entropies`` (linear interpolation between order statistics).

    None for an empty sequence. ``q = 0.5`` is the median, ``q = 1`` the maximum.
    """
    if not entropies:
        return None
    xs = sorted(entropies)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def should_defer(rule: str, value: float | None, threshold: float) -> bool:
    """Whether the measured ``value`` of ``rule`` defers to the large model (None always does)."""
    if value is None:
        return True
    return value > threshold if rule in DEFER_ABOVE else value < threshold


def spend(span: Span) -> dict[str, int]:
    """Prompt tokens, completion tokens and calls of the backend spans under ``span``."""
    calls = [s for s in span.walk() if s.kind == "backend"]
    return {
        "prompt_tokens": sum(s.prompt_tokens for s in calls),
        "completion_tokens": sum(s.completion_tokens for s in calls),
        "calls": sum(int(s.attrs.get("calls", 0)) for s in calls),
    }


class CascadeConfig(StrategyConfig):
    """``cascade`` options."""

    small: StrategySpec = Field(
        default_factory=lambda: {"strategy": "single"},
        description="the cheap strategy that answers first (its spec names its backend)",
        json_schema_extra=tuning(nested="strategy"),
    )
    large: StrategySpec = Field(
        default_factory=lambda: {"strategy": "single"},
        description="the strategy that answers when the rule defers (its spec names its backend)",
        json_schema_extra=tuning(nested="strategy"),
    )
    rule: Rule = Field("mean_logprob", description="the deferral rule", json_schema_extra=tuning())
    threshold: float | None = Field(
        None,
        description="deferral threshold; None = the rule's default (DEFAULT_THRESHOLDS)",
        json_schema_extra=tuning(),
    )
    quantile: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="entropy_quantile: the quantile q",
        json_schema_extra=tuning(),
    )
    top_logprobs: int = Field(
        20,
        ge=2,
        le=20,
        description="entropy_quantile: alternatives per token (the k of top-k)",
        json_schema_extra=tuning(),
    )
    verifier: VerifierSpec | None = Field(
        None,
        description="self_eval: the verifier; None = self_eval on the small backend",
        json_schema_extra=tuning(nested="verifier"),
    )

    @model_validator(mode="after")
    def _verifier_needs_self_eval(self) -> CascadeConfig:
        if self.verifier is not None and self.rule != "self_eval":
            raise ValueError(f"`verifier` is only used by rule 'self_eval', not {self.rule!r}")
        return self

    @property
    def effective_threshold(self) -> float:
        """``threshold``, or the rule's default."""
        return DEFAULT_THRESHOLDS[self.rule] if self.threshold is None else self.threshold


@dataclass
class Decision:
    """The outcome of the deferral rule on the small result."""

    defer: bool
    value: float | None
    reason: str
    attrs: dict[str, Any] = field(default_factory=dict)


@strategies.register("cascade")
class Cascade(Strategy):
    """Small model first; the large one only when the deferral rule fires (module docstring)."""

    Config = CascadeConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        self.small = build_strategy(cfg.small)
        self.large = build_strategy(cfg.large)
        if cfg.rule in LOGPROB_RULES and not isinstance(self.small, Single):
            raise ConfigError(
                f"strategy 'cascade': rule {cfg.rule!r} reads the small answer's token "
                f"logprobs, so `small` must be a 'single' spec (got {self.small.name!r}); "
                "use rule 'self_eval' or 'vote_disagreement' for other small strategies"
            )
        if cfg.rule == "vote_disagreement" and isinstance(self.small, Single):
            raise ConfigError(
                "strategy 'cascade': rule 'vote_disagreement' reads the small strategy's vote "
                "confidence, and 'single' does not vote; set `small` to a voting strategy, "
                "e.g. {strategy: self_consistency, n: 5}"
            )
        self.verifier: Verifier | None = None
        if cfg.rule == "self_eval":
            spec = cfg.verifier or {"verifier": "self_eval", "backend": self.small.backend_name()}
            self.verifier = build_verifier(spec)

    def children(self) -> list[Strategy]:
        return [self.small, self.large]

    def verifiers(self) -> list[Any]:
        return [self.verifier] if self.verifier is not None else []

    def max_samples(self) -> int | None:
        """The small child, the large one, and the verifier's look at the small answer."""
        small, large = self.small.max_samples(), self.large.max_samples()
        if small is None or large is None:
            return None
        return small + large + sum(v.max_samples(1) for v in self.verifiers())

    def signal_needs(self) -> Capabilities:
        """What the rule needs from the small child's backend (beyond the child's own needs)."""
        rule = self.config.rule
        if rule == "entropy_quantile":
            return Capabilities(logprobs=True, top_logprobs=self.config.top_logprobs)
        return Capabilities(logprobs=rule == "mean_logprob")

    def check(self, resolve: Callable[[str | None], Backend]) -> None:
        """The rule's needs on the small backend, then this node, its verifier and children."""
        backend = resolve(self.small.backend_name())
        missing = backend.capabilities.missing(self.signal_needs())
        if missing:
            raise CapabilityError(
                f"strategy 'cascade' with rule {self.config.rule!r} needs backend capabilities "
                f"{', '.join(missing)} on its small backend, which backend {backend.name!r} "
                f"({type(backend).__name__}) does not offer; choose another small backend or "
                "another rule (self_eval, vote_disagreement)"
            )
        super().check(resolve)

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        cfg = self.config
        with ctx.trace.span("small", kind="step", strategy=self.small.name) as span:
            small = await self._run_small(problem, ctx)
            costs = {"small": spend(span)}
            span.set(answer=small.answer, **costs["small"])
        with ctx.trace.span("defer decision", kind="step", rule=cfg.rule) as span:
            decision = await self._decide(problem, small, ctx)
            costs["decision"] = spend(span)
            span.set(
                deferred=decision.defer,
                value=decision.value,
                threshold=cfg.effective_threshold,
                reason=decision.reason,
                **decision.attrs,
            )
        large: Result | None = None
        refused = False
        if decision.defer:
            with ctx.trace.span("large", kind="step", strategy=self.large.name) as span:
                try:
                    large = await self.large(problem, ctx)
                except BudgetExhausted:
                    refused = True
                costs["large"] = spend(span)
                span.set(answer=large.answer if large else None, refused=refused, **costs["large"])
        return self._result(small, decision, large, refused, costs)

    async def _run_small(self, problem: Problem, ctx: RunContext) -> Result:
        """The small child's result; a ``single`` under a logprob rule is sampled here."""
        if self.config.rule not in LOGPROB_RULES:
            return await self.small(problem, ctx)
        cfg = self.small.config
        k = self.config.top_logprobs if self.config.rule == "entropy_quantile" else 0
        request = cfg.request(problem, n=1, logprobs=True, top_logprobs=k)
        with ctx.trace.span(self.small.name, kind="strategy", top_logprobs=k) as span:
            got = await sample(ctx, request, cfg.backend)
            best = got.ok[0] if got.ok else None
            span.set(answer=best.answer if best else None, budget_exhausted=got.budget_exhausted)
        return Result(
            answer=best.answer if best else None,
            candidate=best,
            candidates=[ScoredCandidate(candidate=c) for c in got.candidates],
            budget_exhausted=got.budget_exhausted,
            strategy=self.small.name,
            details=base_details(got),
        )

    async def _decide(self, problem: Problem, small: Result, ctx: RunContext) -> Decision:
        """Apply the rule to the small result (no answer defers without measuring)."""
        if small.answer is None or small.candidate is None:
            return Decision(True, None, "no_answer")
        value, attrs = await self._measure(problem, small, small.candidate, ctx)
        if value is None:
            return Decision(True, None, "no_signal", attrs)
        defer = should_defer(self.config.rule, value, self.config.effective_threshold)
        return Decision(defer, round(value, 6), "rule", attrs)

    async def _measure(
        self, problem: Problem, small: Result, cand: Candidate, ctx: RunContext
    ) -> tuple[float | None, dict[str, Any]]:
        """The rule's measure of the small answer, and attributes for the trace."""
        rule = self.config.rule
        if rule == "mean_logprob":
            return mean_logprob(cand), {"tokens": len(cand.logprobs or [])}
        if rule == "entropy_quantile":
            entropies = token_entropies(cand)
            q = self.config.quantile
            return entropy_quantile(entropies, q), {"tokens": len(entropies), "quantile": q}
        if rule == "vote_disagreement":
            conf = small.details.get("confidence")
            return (float(conf) if isinstance(conf, int | float) else None), {}
        assert self.verifier is not None  # rule == "self_eval"
        (score,) = await self.verifier(problem, [cand], ctx)
        return score.value, {"fallback": bool(score.details.get("fallback", False))}

    def _result(
        self,
        small: Result,
        decision: Decision,
        large: Result | None,
        refused: bool,
        costs: dict[str, dict[str, int]],
    ) -> Result:
        """The large answer when there is one; the small answer otherwise."""
        use_large = large is not None and (large.answer is not None or small.answer is None)
        chosen = large if use_large and large is not None else small
        details: dict[str, Any] = {
            "deferred": decision.defer,
            "rule": self.config.rule,
            "value": decision.value,
            "threshold": self.config.effective_threshold,
            "reason": decision.reason,
            "answered_by": "large" if use_large else "small",
            "small_answer": small.answer,
            "large_answer": large.answer if large is not None else None,
            "cost": costs,
        }
        if chosen.details.get("error"):
            details["error"] = chosen.details["error"]
        if large is not None and not use_large and large.details.get("error"):
            details["large_error"] = large.details["error"]
        return Result(
            answer=chosen.answer,
            candidate=chosen.candidate,
            candidates=small.candidates + (large.candidates if large is not None else []),
            budget_exhausted=small.budget_exhausted
            or refused
            or (large is not None and large.budget_exhausted),
            details=details,
        )
