"""``AsyncClient`` (httpx) and ``Client``, its blocking wrapper. See ``orchestrator.sdk``."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from orchestrator.retry import RetryPolicy
from orchestrator.sdk.errors import (
    AuthenticationError,
    RateLimitError,
    RunFailedError,
    TTCAPIError,
    TTCTimeoutError,
    error_from_response,
    error_from_transport,
)
from orchestrator.sdk.models import (
    TERMINAL_EVENTS,
    RunEvent,
    RunInfo,
    RunResult,
    StrategyInfo,
    VerifierInfo,
    list_items,
    reason_body,
)
from orchestrator.sdk.sse import iter_sse

log = logging.getLogger("orchestrator.sdk")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
"""A Retry-After longer than this (seconds) is not waited for: the error is raised at once."""


class Unset(enum.Enum):
    """Type of ``UNSET``."""

    UNSET = "unset"


UNSET = Unset.UNSET
"""As a per-call ``timeout``: use the client's timeout (``None`` means no limit)."""

Timeout = float | None | Unset

_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport failures that happen before the request reached the server: safe to retry."""


RETRY_POLICY = RetryPolicy(backoff_base=0.5, backoff_max=8.0, retry_after_max=MAX_RETRY_AFTER)
"""The SDK's waits: 0.5 s doubling up to 8 s with full jitter, or the server's Retry-After."""


def backoff(attempt: int, error: TTCAPIError) -> float | None:
    """Seconds to wait before retry number ``attempt`` (0-based); None: do not retry.

    The server's Retry-After wins when given; one above MAX_RETRY_AFTER is not waited for
    (the error, with its ``retry_after``, goes to the caller).
    """
    if not RETRY_POLICY.waits_for(error.retry_after):
        return None
    return RETRY_POLICY.delay(attempt, error.retry_after)


def _run_path(run_id: str) -> str:
    """``/v1/runs/<run_id>`` with the id percent-encoded (an id cannot change the route)."""
    return f"/v1/runs/{quote(run_id, safe='')}"


def _decode(resp: httpx.Response) -> Any:
    """The JSON body of a successful response (None when empty)."""
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError as exc:
        raise TTCAPIError(
            f"the server answered {resp.status_code} with a body that is not JSON: "
            f"{resp.text[:200]!r}",
            status=resp.status_code,
            type="invalid_response",
        ) from exc


class AsyncClient:
    """Async client of the ttc service. Use as ``async with AsyncClient() as ttc:``.

    Args:
        base_url: the service root; default ``$TTC_BASE_URL`` or ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer``; default ``$TTC_API_KEY`` (none when unset).
        timeout: seconds per request (connect, read, write, pool); None for no limit. ``reason``
            waits for the whole run: give it a larger ``timeout=`` per call for long runs.
        transport: an httpx transport, e.g. ``httpx.ASGITransport(app)`` or a MockTransport.
        max_retries: retries of transient failures (see ``orchestrator.sdk``); 0 disables.
        headers: extra headers sent with every request.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("TTC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("TTC_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        hdrs = {"User-Agent": "ttc-sdk/0.1", "Accept": "application/json", **(headers or {})}
        if self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=hdrs, timeout=timeout, transport=transport
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: Timeout = UNSET,
    ) -> Any:
        """Send a request, retrying transient failures; the decoded JSON body or TTCAPIError.

        GET/DELETE are retried on transport errors, 429 and 502/503/504; other methods only
        when the request never reached the server (connect error, connect or pool timeout).
        """
        idempotent = method in ("GET", "HEAD", "DELETE")
        to: Any = httpx.USE_CLIENT_DEFAULT if timeout is UNSET else timeout
        attempt = 0
        while True:
            try:
                resp = await self._http.request(method, path, json=json, params=params, timeout=to)
            except httpx.HTTPError as exc:
                err = error_from_transport(exc, method, self.base_url + path)
                retry = idempotent or isinstance(exc, _UNSENT)
                cause: BaseException | None = exc
            else:
                if resp.is_success:
                    return _decode(resp)
                err, cause = error_from_response(resp), None
                retry = idempotent and resp.status_code in RETRY_STATUSES
            delay = backoff(attempt, err) if retry and attempt < self.max_retries else None
            if delay is None:
                raise err from cause
            log.debug("retrying %s %s in %.2fs after: %s", method, path, delay, err)
            await asyncio.sleep(delay)
            attempt += 1

    # --- runs -------------------------------------------------------------------------------

    async def reason(
        self,
        problem: Any,
        strategy: str | Mapping[str, Any] | None = None,
        budget: Any = None,
        *,
        backend: str | None = None,
        model: str | None = None,
        seed: int | None = None,
        timeout: Timeout = UNSET,
        **options: Any,
    ) -> RunResult:
        """Solve ``problem`` on the server and wait for the result (``POST /v1/reason``).

        Args:
            problem: the question, a ``Problem`` or its dict.
            strategy: a registered strategy, a named config or an inline spec dict
                (``{"strategy": "self_consistency", "n": 8}``); None = the server's default.
            budget: a ``Budget`` or its dict; None = the server's default.
            backend: the backend name; None = the server's default backend.
            model: a model override for that backend (where the backend kind allows it).
            seed: the run's seed.
            timeout: this call's timeout (default: the client's).
            options: the request's ``options``: ``include_trace`` (default true),
                ``include_logprobs`` (default false).

        Raises the TTCAPIError subclasses of the module doc: e.g. BadRequestError (400 unknown
        strategy, 422 invalid field), ServerError (502/503/504 backend failures), ConflictError
        (409: the run was cancelled meanwhile); RunFailedError should the server ever answer
        2xx for a run that did not succeed.
        """
        body = reason_body(problem, strategy, budget, backend, model, seed, options)
        data = await self._request("POST", "/v1/reason", json=body, timeout=timeout)
        if not isinstance(data, dict):
            raise TTCAPIError(f"unexpected answer {str(data)[:200]!r}", type="invalid_response")
        status = data.get("status", "succeeded")
        if status != "succeeded" or data.get("result") is None:
            raw = data.get("error")
            error: dict[str, Any] = raw if isinstance(raw, dict) else {}
            run_id = str(data.get("run_id") or data.get("id") or "")
            raise RunFailedError(
                f"run {run_id} {status}: {error.get('message') or 'no result'}",
                run_id=run_id,
                run_status=str(status),
                type=str(error.get("type") or "run_failed"),
                code=error.get("code"),
                body=data,
            )
        return RunResult.model_validate(data)

    async def create_run(
        self,
        problem: Any,
        strategy: str | Mapping[str, Any] | None = None,
        budget: Any = None,
        *,
        backend: str | None = None,
        model: str | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> str:
        """Start a background run (``POST /v1/runs``) and return its id without waiting.

        Arguments as for ``reason``. Follow it with ``wait``, ``events`` or ``get_run``.
        """
        body = reason_body(problem, strategy, budget, backend, model, seed, options)
        data = await self._request("POST", "/v1/runs", json=body)
        run_id = data.get("run_id") or data.get("id") if isinstance(data, dict) else None
        if not run_id:
            raise TTCAPIError(f"no run id in {str(data)[:200]!r}", type="invalid_response")
        return str(run_id)

    async def get_run(self, run_id: str) -> RunInfo:
        """The run's current record (``GET /v1/runs/{id}``); NotFoundError when unknown."""
        return RunInfo.model_validate(await self._request("GET", _run_path(run_id)))

    async def list_runs(self, *, limit: int = 50, status: str | None = None) -> list[RunInfo]:
        """Recent runs (``GET /v1/runs``), optionally only those with ``status``."""
        params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
        data = await self._request("GET", "/v1/runs", params=params)
        return [RunInfo.model_validate(x) for x in list_items(data, "runs")]

    async def cancel(self, run_id: str) -> RunInfo:
        """Cancel a run (``DELETE /v1/runs/{id}``) and return its record as the server has it.

        Cancelling a finished run changes nothing; NotFoundError when unknown.
        """
        return RunInfo.model_validate(await self._request("DELETE", _run_path(run_id)))

    async def events(self, run_id: str) -> AsyncGenerator[RunEvent, None]:
        """The run's events (``GET /v1/runs/{id}/events``, SSE) up to its result/error event.

        For a live run the server replays past events then follows; for a finished run it sends
        the final event only. No read timeout applies between events; the stream is not
        retried (``wait`` falls back to polling instead). Close the iterator
        (``contextlib.aclosing``) when stopping early.
        """
        url = f"{_run_path(run_id)}/events"
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with self._http.stream("GET", url, headers=headers, timeout=timeout) as resp:
                if not resp.is_success:
                    await resp.aread()
                    raise error_from_response(resp)
                index = 0
                async for sse in iter_sse(resp.aiter_text()):
                    event = RunEvent.from_sse(run_id, sse.event, sse.data, sse.id, index)
                    index += 1
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, "GET", self.base_url + url) from exc

    async def wait(
        self, run_id: str, timeout: float | None = None, poll: float = 0.5, *, stream: bool = True
    ) -> RunInfo:
        """Wait for the run to finish and return its final record.

        Follows the event stream (unless ``stream=False``): the final event carries the final
        record; should it not (or not parse), the record is read once. When the stream is
        unavailable or breaks off, polls ``GET /v1/runs/{id}`` every ``poll`` seconds.
        Raises TTCTimeoutError after ``timeout`` seconds (the run itself keeps going),
        NotFoundError for an unknown run; AuthenticationError / RateLimitError from the stream
        are raised, not papered over by polling.
        """
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                final = await self._follow(run_id) if stream else None
                if final is not None:
                    return final
                while True:
                    info = await self.get_run(run_id)
                    if info.done:
                        return info
                    await asyncio.sleep(poll)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise TTCTimeoutError(
                f"run {run_id} did not finish within {timeout}s; it keeps running "
                "(cancel it to stop it)",
                type="timeout",
            ) from exc

    async def _follow(self, run_id: str) -> RunInfo | None:
        """Follow the event stream to its end: the final record if its last event carries
        one, else None (the caller polls). Auth and rate-limit errors are raised."""
        last: RunEvent | None = None
        try:
            async with aclosing(self.events(run_id)) as events:
                async for event in events:
                    last = event
        except (AuthenticationError, RateLimitError):
            raise
        except TTCAPIError as exc:
            log.debug("event stream of run %s failed (%s); polling", run_id, exc)
            return None
        if last is None or not last.terminal:
            return None
        try:
            info = RunInfo.model_validate(last.data)
        except ValidationError:
            return None
        return info if info.done and info.id == run_id else None

    # --- catalogue and health ---------------------------------------------------------------

    async def strategies(self) -> list[StrategyInfo]:
        """The registered strategies: name, description, config JSON schema, capabilities."""
        data = await self._request("GET", "/v1/strategies")
        return [StrategyInfo.model_validate(x) for x in list_items(data, "strategies")]

    async def verifiers(self) -> list[VerifierInfo]:
        """The registered verifiers: name, description, config JSON schema, capabilities."""
        data = await self._request("GET", "/v1/verifiers")
        return [VerifierInfo.model_validate(x) for x in list_items(data, "verifiers")]

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` while the process is up."""
        return dict(await self._request("GET", "/healthz"))

    async def ready(self) -> dict[str, Any]:
        """``GET /readyz``: per-backend readiness; ServerError (503) when one is not ready."""
        return dict(await self._request("GET", "/readyz"))

    # --- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
