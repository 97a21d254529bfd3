"""API-key authentication and per-key limits of the ttc service.

``require_key`` is the FastAPI dependency every router uses except ``/healthz`` and ``/readyz``:

* Auth is on while the KeyStore (``app.state.key_store``) holds at least one active key; without
  keys (or without a KeyStore) every request passes and ``require_key`` returns None.
* With auth on, a request needs ``Authorization: Bearer <key>``. A missing header, another
  scheme, an unknown key or a revoked key gets 401 with the standard error body
  (``type="authentication_error"``, ``code`` ``missing_api_key`` or ``invalid_api_key``; unknown
  and revoked keys get the same answer, so nothing leaks) and ``WWW-Authenticate: Bearer``.
* A key with ``daily_token_limit`` cannot start runs (every ``POST``: ``/v1/reason``,
  ``/v1/runs``, ``/v1/chat/completions``) once ``KeyStore.tokens_today`` reached the limit: 429
  ``code="daily_token_limit_exceeded"``, ``Retry-After`` = the time to the next UTC midnight.
  Reads (GET, DELETE) stay allowed, so the results of runs already paid for can be fetched.
  The RunManager adds each finished run's tokens with ``KeyStore.add_tokens``, so a run that
  starts under the limit may end above it; the next run is refused.
* A key with ``rpm_limit`` gets at most that many requests admitted in any sliding 60-second
  window, counted in this process (``AuthState``); the request over it gets 429
  (``code="rate_limit_exceeded"``) with ``Retry-After`` = seconds until the oldest request of the
  window leaves it. Refused requests do not count.
* "Is auth on" and successful key lookups are cached for ``AuthState.cache_seconds`` (default
  5 s) per process, so a key created or revoked by ``ttc keys`` takes effect within that delay.
  Failed lookups are never cached. A failing store raises ``StoreError`` (503): fail closed.

The verified key is also left on ``request.state.api_key`` for handlers that need it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from starlette.datastructures import State

from orchestrator.api.errors import APIError
from orchestrator.store.keys import ApiKey, KeyStore, hash_key

WINDOW_SECONDS = 60.0
DEFAULT_CACHE_SECONDS = 5.0
_MAX_CACHED_KEYS = 10_000


class AuthState:
    """Per-process auth caches and the requests-per-minute windows (one per app).

    Args:
        cache_seconds: how long "is auth on" and a verified key are trusted without asking the
            KeyStore again (0 = ask every time).
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._enabled: tuple[float, bool] | None = None
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._windows: dict[str, deque[float]] = {}

    def invalidate(self) -> None:
        """Forget the cached auth state and keys (e.g. after creating or revoking a key)."""
        self._enabled = None
        self._keys.clear()

    async def enabled(self, store: KeyStore) -> bool:
        """Whether auth is on: the store has an active key (cached)."""
        now = self.clock()
        if self._enabled is not None and now < self._enabled[0]:
            return self._enabled[1]
        value = await store.any_active()
        self._enabled = (now + self.cache_seconds, value)
        return value

    async def verify(self, store: KeyStore, plaintext: str) -> ApiKey | None:
        """The active key for ``plaintext`` (positive results cached), or None."""
        now = self.clock()
        digest = hash_key(plaintext)  # the cache never holds plaintext keys
        cached = self._keys.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        key = await store.verify(plaintext)
        if key is None:
            self._keys.pop(digest, None)
        elif self.cache_seconds > 0:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[digest] = (now + self.cache_seconds, key)
        return key

    def admit(self, key_id: str, rpm_limit: int) -> float | None:
        """Count a request of ``key_id`` in its 60 s window; return None when admitted, else
        the seconds until a slot frees (the request is then not counted)."""
        now = self.clock()
        window = self._windows.setdefault(key_id, deque())
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        if len(window) >= rpm_limit:
            return max(0.0, window[0] + WINDOW_SECONDS - now)
        window.append(now)
        return None


def auth_state(app_state: State) -> AuthState:
    """The app's AuthState (``app.state.auth``), created on first use."""
    state = getattr(app_state, "auth", None)
    if not isinstance(state, AuthState):
        state = AuthState()
        app_state.auth = state
    return state


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(
        401,
        message,
        type="authentication_error",
        code=code,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _too_many(message: str, code: str, retry_after: float, **headers: str) -> APIError:
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


async def require_key(request: Request) -> ApiKey | None:
    """FastAPI dependency: the caller's ApiKey, None when auth is off; raises APIError 401/429
    (see the module docstring)."""
    store: KeyStore | None = getattr(request.app.state, "key_store", None)
    if store is None:
        return None
    state = auth_state(request.app.state)
    if not await state.enabled(store):
        return None
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise _unauthorized(
            "missing API key: send it as 'Authorization: Bearer <key>'", "missing_api_key"
        )
    key = await state.verify(store, token)
    if key is None:
        raise _unauthorized("invalid or revoked API key", "invalid_api_key")
    if key.daily_token_limit is not None and request.method == "POST":
        spent = await store.tokens_today(key.id)
        if spent >= key.daily_token_limit:
            raise _too_many(
                f"API key {key.name!r} spent its daily budget of {key.daily_token_limit} "
                f"tokens ({spent} today); it resets at 00:00 UTC",
                "daily_token_limit_exceeded",
                seconds_to_utc_midnight(_store_now(store)),
            )
    if key.rpm_limit is not None:
        wait = state.admit(key.id, key.rpm_limit)
        if wait is not None:
            raise _too_many(
                f"API key {key.name!r} is over its limit of {key.rpm_limit} requests per minute",
                "rate_limit_exceeded",
                wait,
                **{"X-RateLimit-Limit-Requests": str(key.rpm_limit)},
            )
    request.state.api_key = key
    return key


def _store_now(store: Any) -> datetime:
    """The KeyStore's clock (its day boundaries), else the wall clock."""
    clock = getattr(store, "clock", None)
    now = clock() if callable(clock) else datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
