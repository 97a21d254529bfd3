"""API-key authentication and per-key request rates of the ttc service.

``require_key`` is the FastAPI dependency every route uses except ``/healthz`` and ``/readyz``:

* ``settings.auth == "off"``: every request passes and ``require_key`` returns None (the
  service refuses to start like that on a non-loopback interface without ``--insecure``).
* ``settings.auth == "required"`` (the default) fails closed: a request needs
  ``Authorization: Bearer <key>`` with an active key of the KeyStore. A missing header, another
  scheme, an unknown key or a revoked key gets 401 with the standard error body
  (``type="authentication_error"``, ``code`` ``missing_api_key`` or ``invalid_api_key``; unknown
  and revoked keys get the same answer, so nothing leaks) and ``WWW-Authenticate: Bearer``.
  With no active key at all (a fresh store, the last key revoked), every request gets 401
  ``code="no_api_keys"`` saying how to create one; the service says so at start-up too.
* A key with ``rpm_limit`` gets at most that many requests admitted in any sliding 60-second
  window, counted in this process (``AuthState``); the request over it gets 429
  (``code="rate_limit_exceeded"``) with ``Retry-After`` = seconds until the oldest request of the
  window leaves it. Refused requests do not count. Daily token limits are enforced when a run
  is admitted (``orchestrator.api.admission``).
* "Is any key active" and successful key lookups are cached for ``AuthState.cache_seconds``
  (default 5 s) per process, so a key created or revoked by ``ttc keys`` takes effect within
  that delay. Failed lookups are never cached. A failing store raises ``StoreError`` (503):
  fail closed.

The verified key is also left on ``request.state.api_key`` for handlers that need it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from fastapi import Request
from starlette.datastructures import State

from orchestrator.api.admission import too_many
from orchestrator.api.errors import APIError
from orchestrator.store.keys import ApiKey, KeyStore, hash_key

NO_KEYS = (
    "this service requires an API key and none is active: the operator creates one with "
    "`ttc keys create NAME` on the service's store (or sets `auth: off` on a loopback service)"
)
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


async def require_key(request: Request) -> ApiKey | None:
    """FastAPI dependency: the caller's ApiKey, None when auth is off; raises APIError 401/429
    (see the module docstring)."""
    settings = getattr(request.app.state, "settings", None)
    if settings is not None and settings.auth == "off":
        return None
    store: KeyStore | None = getattr(request.app.state, "key_store", None)
    if store is None:
        raise APIError(
            503, "the service is not started yet", type="service_unavailable", code="not_started"
        )
    state = auth_state(request.app.state)
    if not await state.enabled(store):
        raise _unauthorized(NO_KEYS, "no_api_keys")
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise _unauthorized(
            "missing API key: send it as 'Authorization: Bearer <key>'", "missing_api_key"
        )
    key = await state.verify(store, token)
    if key is None:
        raise _unauthorized("invalid or revoked API key", "invalid_api_key")
    if key.rpm_limit is not None:
        wait = state.admit(key.id, key.rpm_limit)
        if wait is not None:
            raise too_many(
                f"API key {key.name!r} is over its limit of {key.rpm_limit} requests per minute",
                "rate_limit_exceeded",
                wait,
                **{"X-RateLimit-Limit-Requests": str(key.rpm_limit)},
            )
    request.state.api_key = key
    return key


async def may_see_details(request: Request) -> bool:
    """Whether the caller may read service details (``/readyz``): auth is off, or the request
    carries an active key. Never raises for a missing or bad key."""
    settings = getattr(request.app.state, "settings", None)
    if settings is not None and settings.auth == "off":
        return True
    store: KeyStore | None = getattr(request.app.state, "key_store", None)
    token = bearer_token(request.headers.get("authorization"))
    if store is None or token is None:
        return False
    try:
        return await auth_state(request.app.state).verify(store, token) is not None
    except Exception:
        return False
