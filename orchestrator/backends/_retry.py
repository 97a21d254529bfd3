"""Retries for HTTP backends: classify failures, wait (``orchestrator.retry``), give up.

The rule: 429, 5xx, timeouts, connection errors and malformed responses are retried; any other
4xx is not. Every failed attempt is also reported by its fault kind (``FaultKind``:
``rate_limited``, ``unavailable`` (503), ``server_error`` (other 5xx), ``rejected`` (other
4xx), ``timeout``, ``connection``, ``invalid_response``) to an optional ``on_fault`` callback,
which backends use to count what their server did. When the retries run out, or on a
non-retryable failure, the last failure is raised as the matching ``BackendError`` subclass,
chained (``raise ... from``) to the transport error.
``asyncio.CancelledError`` is never caught here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import openai
import pydantic

from orchestrator.errors import (
    BackendError,
    BackendProtocolError,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
)
from orchestrator.retry import RetryPolicy, retry_after_from_headers

log = logging.getLogger(__name__)

T = TypeVar("T")
FailureKind = Literal["timeout", "unavailable", "protocol", "request"]
FaultKind = Literal[
    "rate_limited", "unavailable", "server_error", "rejected", "timeout", "connection",
    "invalid_response", "short_n",
]  # fmt: skip
_ERRORS: dict[FailureKind, type[BackendError]] = {
    "timeout": BackendTimeout,
    "unavailable": BackendUnavailable,
    "protocol": BackendProtocolError,
    "request": BackendRequestError,
}


class MalformedResponse(Exception):
    """A response arrived but is not a valid completion; raised by parsers, retried."""


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified.

    Attributes:
        kind: which ``BackendError`` it becomes; ``request`` failures are not retried.
        message: what went wrong, with the server's own message when it sent one.
        status: the HTTP status, when there was a response.
        retry_after: seconds the server asked us to wait (``Retry-After``), if any.
        fault: what the server did, in the words of the fault metrics.
    """

    kind: FailureKind
    message: str
    status: int | None = None
    retry_after: float | None = None
    fault: FaultKind = "server_error"


def _status_fault(status: int) -> FaultKind:
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "unavailable"
    return "server_error" if status >= 500 else "rejected"


def server_message(exc: openai.APIStatusError) -> str:
    """The error message the server put in its body (OpenAI, vLLM or FastAPI shape)."""
    body = exc.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value:
                return value
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return exc.message


def classify(exc: BaseException) -> Failure | None:
    """Classify a transport or parse exception; None for anything else (re-raise it as is)."""
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return Failure("timeout", "request timed out", fault="timeout")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        kind: FailureKind = "unavailable" if status == 429 or status >= 500 else "request"
        retry_after = retry_after_from_headers(exc.response.headers)
        message = f"HTTP {status}: {server_message(exc)}"
        return Failure(kind, message, status, retry_after, fault=_status_fault(status))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        message = f"connection error: {type(cause).__name__}: {cause}"
        return Failure("unavailable", message, fault="connection")
    if isinstance(exc, openai.APIResponseValidationError):
        message = f"invalid response: {exc.message}"
        return Failure("protocol", message, exc.status_code, fault="invalid_response")
    if isinstance(exc, MalformedResponse | json.JSONDecodeError | pydantic.ValidationError):
        return Failure("protocol", f"unparseable response: {exc}", fault="invalid_response")
    return None


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    backend: str,
    context: str,
    timeout: float | None = None,
    on_fault: Callable[[FaultKind], None] | None = None,
) -> T:
    """Await ``attempt()`` until it succeeds, retrying per ``policy``.

    Args:
        attempt: makes one request and parses it; raises transport or parse errors.
        policy: retry counts and waits.
        backend: the backend's name, for the raised error.
        context: what was attempted (endpoint, URL, model), prefixed to error messages.
        timeout: the per-attempt timeout in seconds, named in timeout messages.
        on_fault: called with the fault kind of every failed attempt.

    Returns:
        The first successful result.

    Raises:
        BackendRequestError: at once, on a 4xx other than 429.
        BackendTimeout | BackendUnavailable | BackendProtocolError: after the last retry,
            matching the last failure.
    """
    for retry in range(policy.max_retries + 1):
        try:
            return await attempt()
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            if on_fault is not None:
                on_fault(failure.fault)
            if failure.kind == "timeout" and timeout is not None:
                failure = Failure("timeout", f"no response within {timeout:g} s (timed out)")
            attempts = retry + 1
            if failure.kind == "request":
                raise _error(
                    failure, f"{context}: rejected ({failure.message}); not retried", backend
                ) from exc
            if retry == policy.max_retries:
                message = f"{context}: {failure.message}; gave up after {attempts} attempt(s)"
                raise _error(failure, message, backend) from exc
            wait = policy.delay(retry, failure.retry_after)
            log.warning(
                "%s: %s (attempt %d of %d); retrying in %.2f s",
                context,
                failure.message,
                attempts,
                policy.max_retries + 1,
                wait,
            )
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _error(failure: Failure, message: str, backend: str) -> BackendError:
    return _ERRORS[failure.kind](message, backend=backend, status=failure.status)
