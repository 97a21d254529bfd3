"""Budget (the limits of one run) and BudgetMeter (what the run has spent).

Every backend call of a run goes through the run's meter in two steps:

1. ``admit(n, max_tokens, prompt_tokens_estimate, pricing)`` before the call. It raises
   ``BudgetExhausted`` when a limit is already reached (counting the reservations of calls still
   in flight), and otherwise returns an ``Admission`` that may *narrow* the request so that its
   worst case fits the completion-token limit: fewer samples (``n``), and for a single sample a
   smaller ``max_tokens``. The worst case of the admitted call is reserved.
2. ``settle(admission, ...)`` after the call replaces the reservation by what was really spent,
   or ``release(admission)`` when the call failed without spending.

Guarantee: completion tokens never exceed ``max_completion_tokens`` (the admitted worst case
always fits). Prompt tokens, calls and dollars are checked against what is spent and reserved
when a call is admitted, so they overshoot by at most the one call that crossed the line.
The seconds limit is a deadline: no call is admitted after it, and ``RunContext`` cancels a call
still in flight when it passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.backends.base import Pricing
from orchestrator.errors import BudgetExhausted
from orchestrator.types import Usage


class Budget(BaseModel):
    """Per-run limits. ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_completion_tokens: int | None = Field(None, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=1)
    max_calls: int | None = Field(None, ge=1)
    max_usd: float | None = Field(None, gt=0)
    max_seconds: float | None = Field(None, gt=0)


@dataclass
class Admission:
    """A call the meter let through, with the (possibly narrowed) sampling it may do."""

    n: int
    max_tokens: int
    reserved_tokens: int
    reserved_prompt: int
    reserved_usd: float
    narrowed: bool


class BudgetMeter:
    """Tracks one run's spending against its Budget. Not shared between runs.

    All methods are synchronous and called from the event loop thread, so no lock is needed.
    """

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget or Budget()
        self._now = time.monotonic
        self.started = self._now()
        self.usage = Usage()
        self.exhausted = False
        self.exhausted_by: str | None = None
        self._reserved_tokens = 0
        self._reserved_prompt = 0
        self._reserved_usd = 0.0
        self._inflight = 0

    @property
    def deadline(self) -> float | None:
        """Monotonic time after which no call is admitted, or None."""
        s = self.budget.max_seconds
        return None if s is None else self.started + s

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (never negative), or None without one."""
        d = self.deadline
        return None if d is None else max(0.0, d - self._now())

    def mark_exhausted(self, limit: str) -> None:
        """Record that ``limit`` bound the run (a refusal, or a sample cut short by it)."""
        self.exhausted = True
        self.exhausted_by = self.exhausted_by or limit

    def refuse(self, limit: str, detail: str) -> BudgetExhausted:
        """Mark the meter exhausted by ``limit`` and return the BudgetExhausted to raise."""
        self.mark_exhausted(limit)
        return BudgetExhausted(limit, f"budget exhausted: {limit} ({detail})")

    def admit(
        self, n: int, max_tokens: int, prompt_tokens: int = 0, pricing: Pricing | None = None
    ) -> Admission:
        """Admit a call of ``n`` samples of up to ``max_tokens`` each, or raise BudgetExhausted."""
        b = self.budget
        if b.max_seconds is not None and self.seconds_left() == 0.0:
            raise self.refuse("seconds", f"limit {b.max_seconds}s")
        if b.max_calls is not None and self.usage.calls + self._inflight >= b.max_calls:
            raise self.refuse("calls", f"limit {b.max_calls}")
        prompt_spent = self.usage.prompt_tokens + self._reserved_prompt
        if b.max_prompt_tokens is not None and prompt_spent >= b.max_prompt_tokens:
            raise self.refuse("prompt_tokens", f"limit {b.max_prompt_tokens}")
        narrowed = False
        if b.max_completion_tokens is not None:
            left = b.max_completion_tokens - self.usage.completion_tokens - self._reserved_tokens
            if left <= 0:
                raise self.refuse("completion_tokens", f"limit {b.max_completion_tokens}")
            fit = max(1, min(n, left // max_tokens))
            if fit < n:
                n, narrowed = fit, True
            if max_tokens > left:
                max_tokens, narrowed = left, True
        usd = (pricing or Pricing()).cost(prompt_tokens, n * max_tokens)
        if b.max_usd is not None and self.usage.cost_usd + self._reserved_usd >= b.max_usd:
            raise self.refuse("usd", f"limit ${b.max_usd}")
        adm = Admission(n, max_tokens, n * max_tokens, prompt_tokens, usd, narrowed)
        self._reserved_tokens += adm.reserved_tokens
        self._reserved_prompt += adm.reserved_prompt
        self._reserved_usd += adm.reserved_usd
        self._inflight += 1
        return adm

    def admit_call(self) -> Admission:
        """Admit a call that samples no tokens (e.g. a reward-model request), or raise.

        Only the deadline and the calls limit apply; settle or release it like ``admit``'s.
        """
        b = self.budget
        if b.max_seconds is not None and self.seconds_left() == 0.0:
            raise self.refuse("seconds", f"limit {b.max_seconds}s")
        if b.max_calls is not None and self.usage.calls + self._inflight >= b.max_calls:
            raise self.refuse("calls", f"limit {b.max_calls}")
        self._inflight += 1
        return Admission(0, 0, 0, 0, 0.0, False)

    def release(self, adm: Admission) -> None:
        """Drop a reservation of a call that spent nothing (failed or cancelled)."""
        self._reserved_tokens -= adm.reserved_tokens
        self._reserved_prompt -= adm.reserved_prompt
        self._reserved_usd -= adm.reserved_usd
        self._inflight -= 1

    def settle(self, adm: Admission, spent: Usage) -> None:
        """Replace a reservation by what the call really spent."""
        self.release(adm)
        self.usage = self.usage + spent
