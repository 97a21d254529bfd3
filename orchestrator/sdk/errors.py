"""The SDK's exceptions and how HTTP answers and transport failures map onto them.

::

    TTCError                        (orchestrator.errors)
    └── TTCAPIError                 status, type, message, param, code, retry_after, body
        ├── BadRequestError         400, 422: the request is invalid (``param`` names the field)
        ├── AuthenticationError     401: missing, unknown or revoked API key
        ├── PermissionDeniedError   403
        ├── NotFoundError           404: unknown run or route
        ├── ConflictError           409
        ├── RateLimitError          429: ``retry_after`` seconds from the Retry-After header
        ├── ServerError             5xx: 502 backend error, 503 unavailable, 504 backend timeout
        ├── TTCTimeoutError         the request (or ``wait``) timed out; ``status`` is None
        ├── TTCConnectionError      the service could not be reached or dropped the connection
        └── RunFailedError          ``reason`` finished with a failed or cancelled run
"""

from __future__ import annotations

from typing import Any

import httpx

from orchestrator.errors import TTCError
from orchestrator.retry import parse_retry_after


class TTCAPIError(TTCError):
    """An error answer of the ttc service, or a failure to get one.

    Attributes:
        status: the HTTP status (None when no answer arrived).
        type: the error type from the body (e.g. ``invalid_request_error``, ``backend_error``).
        message: the server's message.
        param: the offending request field, when the server named one.
        code: a machine-readable code, when given.
        retry_after: seconds the server asked to wait (Retry-After), or None.
        body: the decoded response body (None when none).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "api_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.body = body
        super().__init__(message)

    def __str__(self) -> str:
        head = f"{self.status} {self.type}" if self.status is not None else self.type
        return f"{head}: {self.message}" + (f" (param: {self.param})" if self.param else "")


class BadRequestError(TTCAPIError):
    """400 or 422: the request is invalid."""


class AuthenticationError(TTCAPIError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(TTCAPIError):
    """403: the key may not do this."""


class NotFoundError(TTCAPIError):
    """404: unknown run or route."""


class ConflictError(TTCAPIError):
    """409: the request conflicts with the resource's state."""


class RateLimitError(TTCAPIError):
    """429: a request or token limit was hit; ``retry_after`` says when to try again."""


class ServerError(TTCAPIError):
    """5xx: the service or its backend failed (502 / 503 / 504 after the server's retries)."""


class TTCTimeoutError(TTCAPIError):
    """The request timed out (connect, read, write or pool), or ``wait`` ran out of time."""


class TTCConnectionError(TTCAPIError):
    """The service could not be reached, or the connection broke off."""


class RunFailedError(TTCAPIError):
    """A synchronous ``reason`` call finished with a run that did not succeed.

    Attributes:
        run_id: the run's id (look it up with ``get_run``).
        run_status: ``failed`` or ``cancelled``.
    """

    def __init__(self, message: str, *, run_id: str, run_status: str, **kwargs: Any) -> None:
        self.run_id = run_id
        self.run_status = run_status
        super().__init__(message, **kwargs)


_BY_STATUS: dict[int, type[TTCAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: BadRequestError,
    429: RateLimitError,
}
_DEFAULT_TYPE = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def _fields(body: Any, fallback: str) -> dict[str, Any]:
    """message/type/param/code from an error body; tolerant of non-ttc shapes."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return {
                "message": str(err.get("message") or fallback),
                "type": err.get("type"),
                "param": None if err.get("param") is None else str(err["param"]),
                "code": None if err.get("code") is None else str(err["code"]),
            }
        if isinstance(err, str):
            return {"message": err}
        if "detail" in body:  # a plain FastAPI/Starlette error (e.g. from a proxy in between)
            return {"message": str(body["detail"])}
    if isinstance(body, str) and body.strip():
        return {"message": f"{fallback}: {body.strip()[:300]}"}
    return {"message": fallback}


def error_from_response(resp: httpx.Response) -> TTCAPIError:
    """The TTCAPIError subclass for a non-2xx response (its body must have been read)."""
    status = resp.status_code
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    fields = _fields(body, f"HTTP {status} {resp.reason_phrase}".strip())
    default_type = _DEFAULT_TYPE.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else TTCAPIError)
    return cls(
        fields["message"],
        status=status,
        type=fields.get("type") or default_type,
        param=fields.get("param"),
        code=fields.get("code"),
        retry_after=parse_retry_after(resp.headers.get("retry-after")),
        body=body,
    )


def error_from_transport(exc: httpx.HTTPError, method: str, url: str) -> TTCAPIError:
    """The TTCTimeoutError / TTCConnectionError for an httpx transport failure."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TTCTimeoutError(f"{method} {url} timed out ({detail})", type="timeout")
    return TTCConnectionError(
        f"{method} {url} failed: cannot reach the ttc service or the connection broke off "
        f"({detail})",
        type="connection_error",
    )
