"""Retry timing shared by every HTTP client of ttc: the backends' transport and the SDK.

The one parser of ``Retry-After`` (delta-seconds or an HTTP date; vLLM and OpenAI also send
``retry-after-ms``) and the one backoff rule (exponential with full jitter, capped). What counts
as retryable differs by client (the backends retry 429, 5xx, timeouts and connection errors;
the SDK only idempotent requests), so classification stays with each client; how long to wait
lives here. Standard library only: this module sits at the bottom of the layers.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

__all__ = ["RetryPolicy", "parse_retry_after", "retry_after_from_headers"]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None.

    Never negative; an HTTP date without a zone (``-0000``) counts as UTC (RFC 5322).
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After``; None when neither parses."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), now)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Attributes:
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most).
        backoff_base: the first backoff ceiling in seconds; it doubles per retry.
        backoff_max: the largest backoff ceiling in seconds.
        retry_after_max: the longest ``Retry-After`` waited for; a longer one is capped by
            ``delay`` (the backends retry after the cap) or, for a client that would rather hand
            the wait to its caller (the SDK), refused by ``waits_for``.
    """

    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0

    def waits_for(self, retry_after: float | None) -> bool:
        """Whether a server's ``Retry-After`` is short enough to wait for (None: yes)."""
        return retry_after is None or retry_after <= self.retry_after_max

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        The server's ``Retry-After`` (capped at ``retry_after_max``) wins; otherwise exponential
        backoff with full jitter: uniform in ``[0, min(backoff_max, backoff_base * 2**retry)]``.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2.0**retry))
