"""Admission of runs: the bounded queue, per-key concurrency and daily token reservations.

The RunManager asks, in this order, before it stores a run:

1. :meth:`Admission.hold` (synchronous, so concurrent submits cannot all slip through): with
   ``max_concurrent_runs`` runs executing, at most ``max_queued_runs`` more may wait, and an API
   key may have at most ``max_runs_per_key`` runs queued or running in this process; beyond
   either, 429 (``rate_limit_error``; ``code`` ``queue_full`` or ``too_many_runs``) with
   ``Retry-After`` (the recent mean run time, 1 to 120 s). The hold counts the submit until the
   run is live (or the submit fails).
2. :meth:`Admission.reserve` (keys with a ``daily_token_limit``): the run's worst case in tokens
   (``max_completion_tokens + max_prompt_tokens`` of its budget) is reserved against the key's
   limit for the UTC day, atomically in the store (``KeyStore.reserve``), so concurrent runs in
   any number of replicas sharing the database never hold more than the limit. When less is
   left, the run gets what is left: its budget's token limits are narrowed to fit; when nothing
   (or a single token) is left, 429 ``daily_token_limit_exceeded`` with ``Retry-After`` = the
   time to the next UTC midnight. The RunRecorder settles the reservation with what the run
   spent when it ends; the limit can be exceeded only by the prompt tokens of the one call per
   run that crossed its budget (``orchestrator.budget``).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from orchestrator.api.errors import APIError
from orchestrator.budget import Budget

if TYPE_CHECKING:
    from orchestrator.api.settings import ServiceSettings
    from orchestrator.store.keys import ApiKey, KeyStore

RECENT_DURATIONS = 32


def too_many(message: str, code: str, retry_after: float, **headers: str) -> APIError:
    """429 with ``Retry-After`` (whole seconds, at least 1)."""
    seconds = max(1, math.ceil(retry_after))
    return APIError(
        429,
        message,
        type="rate_limit_error",
        code=code,
        headers={"Retry-After": str(seconds), **headers},
    )


def seconds_to_utc_midnight(now: datetime) -> float:
    """Seconds from ``now`` (aware) to the next UTC midnight (when daily counters reset)."""
    now = now.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


def worst_case_tokens(budget: Budget | None) -> int | None:
    """The most tokens a run under ``budget`` may spend (completion + prompt limits), or None
    when either is unlimited."""
    if budget is None or budget.max_completion_tokens is None or budget.max_prompt_tokens is None:
        return None
    return budget.max_completion_tokens + budget.max_prompt_tokens


def fit_budget(budget: Budget | None, tokens: int) -> Budget:
    """``budget`` with its completion and prompt limits narrowed (in proportion, each at least
    1) so that together they are at most ``tokens`` (>= 2); unlimited ones count as equal."""
    base = budget or Budget()
    completion = base.max_completion_tokens or tokens
    prompt = base.max_prompt_tokens or tokens
    if completion + prompt <= tokens:
        return base.model_copy(update={"max_completion_tokens": completion,
                                       "max_prompt_tokens": prompt})  # fmt: skip
    share = max(1, min(tokens - 1, round(tokens * completion / (completion + prompt))))
    return base.model_copy(
        update={"max_completion_tokens": share, "max_prompt_tokens": tokens - share}
    )


class Admission:
    """The admission rules of one service process (see the module docstring).

    Args:
        settings: ``max_concurrent_runs``, ``max_queued_runs``, ``max_runs_per_key``.
        key_store: where reservations are made (None: daily limits are not enforced).
        live: the number of runs live in this process and the ids of the keys that own them.
        clock: the time of day for ``Retry-After`` of the daily limit (the KeyStore's).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        key_store: KeyStore | None,
        live: Callable[[], list[str | None]],
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.key_store = key_store
        self._live = live
        self._clock = clock or getattr(key_store, "clock", None) or (lambda: datetime.now(UTC))
        self._pending: Counter[str | None] = Counter()
        self._durations: deque[float] = deque(maxlen=RECENT_DURATIONS)

    def observe(self, seconds: float) -> None:
        """A run took ``seconds`` (the queue's ``Retry-After`` is the recent mean)."""
        self._durations.append(seconds)

    def retry_after(self) -> float:
        """The recent mean run time, 1 to 120 s."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return min(120.0, max(1.0, mean))

    @contextmanager
    def hold(self, key_id: str | None) -> Iterator[None]:
        """Admit one submit to the queue (429 when full) for the block's duration."""
        owners = self._live()
        s = self.settings
        waiting = len(owners) + sum(self._pending.values()) - s.max_concurrent_runs
        if waiting >= s.max_queued_runs:
            raise too_many(
                f"the run queue is full ({s.max_concurrent_runs} runs running, "
                f"{max(waiting, 0)} waiting; max_queued_runs {s.max_queued_runs}): retry later",
                "queue_full",
                self.retry_after(),
            )
        mine = owners.count(key_id) + self._pending[key_id] if key_id is not None else 0
        if key_id is not None and mine >= s.max_runs_per_key:
            raise too_many(
                f"this API key has {mine} runs queued or running; the limit is "
                f"{s.max_runs_per_key} (max_runs_per_key): wait for one to finish",
                "too_many_runs",
                self.retry_after(),
            )
        self._pending[key_id] += 1
        try:
            yield
        finally:
            self._pending[key_id] -= 1
            if not self._pending[key_id]:
                del self._pending[key_id]

    async def reserve(
        self, key: ApiKey | None, run_id: str, budget: Budget | None
    ) -> Budget | None:
        """The run's budget once its tokens are reserved against the key's daily limit
        (narrowed when less is left); unchanged for keys without a limit. 429 when nothing is
        left today."""
        limit = key.daily_token_limit if key is not None else None
        if key is None or limit is None or self.key_store is None:
            return budget
        worst = worst_case_tokens(budget)
        granted = await self.key_store.reserve(key.id, run_id, min(worst or limit, limit), limit)
        if granted < 2:
            if granted:
                await self.key_store.settle(key.id, run_id, 0)
            raise too_many(
                f"API key {key.name!r} spent or holds its daily budget of {limit} tokens; it "
                "resets at 00:00 UTC",
                "daily_token_limit_exceeded",
                seconds_to_utc_midnight(self._now()),
            )
        if worst is not None and granted >= worst:
            return budget
        return fit_budget(budget, granted)

    async def release(self, key: ApiKey | None, run_id: str) -> None:
        """Give back the reservation of a run that was refused after ``reserve``."""
        if key is not None and key.daily_token_limit is not None and self.key_store is not None:
            await self.key_store.settle(key.id, run_id, 0)

    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
