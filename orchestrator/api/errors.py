"""Errors of the REST service: one body shape, the right status, never a stack trace.

Every error response is ``{"error": {"message", "type", "param", "code"}}`` (the OpenAI shape,
so OpenAI clients raise their usual exceptions). :func:`install_error_handlers` maps:

======================================  ======  =========================  =====================
exception                               status  type                       code
======================================  ======  =========================  =====================
APIError                                its own its own                    its own
RequestValidationError (bad body)       422     invalid_request_error      pydantic's error type
ConfigError / RegistryError             400     invalid_request_error      invalid_config /
                                                                           unknown_name
CapabilityError                         400     invalid_request_error      missing_capability
BackendTimeout                          504     backend_error              backend_timeout
BackendUnavailable                      503     backend_error              backend_unavailable
other BackendError                      502     backend_error              backend_error
StoreError                              503     store_error                store_unavailable
HTTPException (404 route, 405, ...)     its own not_found_error (404) or   not_found /
                                                invalid_request_error      method_not_allowed
any other Exception                     500     internal_error             internal_error
======================================  ======  =========================  =====================

Messages follow ``orchestrator.api.hygiene``: no base URL, upstream body, database host or
server path reaches a client; every 5xx answer quotes an error id under which the server log
holds the details. Every error response carries ``x-should-retry`` (read by the OpenAI SDKs):
``true`` only for what a retry can fix (a full queue, a rate limit, a service starting or
shutting down, a store briefly unavailable; ``RETRYABLE_CODES``), ``false`` for the rest, so a
client does not run a failed (maybe hour-long) run twice.
A run that fails inside the RunManager is stored with an ``error`` dict of the same fields
(``type``, ``code``, ``message``); :func:`status_for_error` gives the HTTP status to answer it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.hygiene import logged, public_backend_error, scrub
from orchestrator.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    CapabilityError,
    ConfigError,
    RegistryError,
    StoreError,
)
from orchestrator.types import Result

log = logging.getLogger("orchestrator.api")


class ErrorDetail(BaseModel):
    """The fields of an error body (documented in the OpenAPI schema)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error response body."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "bad request: unknown name, bad config, missing capability"),
        (401, "missing or invalid API key"),
        (403, "a privileged config field this request may not set: names the field and grant"),
        (404, "unknown run or route"),
        (413, "request body above the service's limit"),
        (422, "invalid body: names the field"),
        (429, "rate or token limit reached"),
        (500, "internal error (no details; logged server-side)"),
        (502, "backend failed"),
        (503, "backend or store unavailable, or the service is shutting down"),
        (504, "backend timed out"),
    )
}
"""``responses=`` for routes, so the OpenAPI schema documents the error body of each status."""

RETRYABLE_CODES = frozenset(
    {
        "queue_full",
        "too_many_runs",
        "rate_limit_exceeded",
        "shutting_down",
        "not_started",
        "store_unavailable",
        "not_ready",
    }
)
"""Error codes a retry can fix (``x-should-retry: true``); every other error says false."""


class APIError(Exception):
    """An error answered as ``status`` with the standard body (and optional headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The response body."""
        return error_body(self.message, self.type, self.param, self.code)

    @property
    def should_retry(self) -> bool:
        """Whether a retry of the same request can succeed (``RETRYABLE_CODES``)."""
        return self.code in RETRYABLE_CODES

    def response(self) -> JSONResponse:
        """The JSON response, with ``x-should-retry``."""
        headers = {**self.headers, "x-should-retry": "true" if self.should_retry else "false"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(what: str, name: str) -> APIError:
    """404 for an unknown ``what`` (e.g. ``"run"``) called ``name``."""
    return APIError(404, f"unknown {what} {name!r}", type="not_found_error", code="not_found")


_STATUS_BY_CODE = {
    "backend_timeout": 504,
    "backend_unavailable": 503,
    "shutting_down": 503,
}
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "cancelled": 409,
    "rate_limit_error": 429,
    "backend_error": 502,
    "store_error": 503,
    "interrupted": 503,
    "service_unavailable": 503,
}


def status_for_error(error: Mapping[str, Any]) -> int:
    """The HTTP status for a stored run error dict (``type``/``code``/``message``): by code
    (backend timeout 504, unavailable 503), else by type (bad request 400, cancelled 409,
    other backend errors 502, store or interrupted 503), else 500."""
    code, kind = error.get("code"), error.get("type")
    if code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[code]
    return _STATUS_BY_TYPE.get(str(kind), 500)


def api_error_from(error: Mapping[str, Any]) -> APIError:
    """An APIError answering a stored run error dict."""
    return APIError(
        status_for_error(error),
        str(error.get("message") or "the run failed"),
        type=str(error.get("type") or "internal_error"),
        param=error.get("param"),
        code=error.get("code"),
    )


def backend_error_code(exc_type: str) -> str:
    """``backend_timeout`` / ``backend_unavailable`` / ``backend_error`` for a class name."""
    if exc_type == BackendTimeout.__name__:
        return "backend_timeout"
    if exc_type == BackendUnavailable.__name__:
        return "backend_unavailable"
    return "backend_error"


def error_dict(exc: BaseException) -> dict[str, Any]:
    """The stored error dict (``message``, ``type``, ``code``) for an exception of a run.

    Backend and store failures get a public message and an error id (the details are logged
    under it, see ``hygiene``); anything that is not a ttc error gets a generic message and an
    error id (its traceback logged).
    """
    if isinstance(exc, BackendError):
        code = "backend_error"
        if isinstance(exc, BackendTimeout):
            code = "backend_timeout"
        elif isinstance(exc, BackendUnavailable):
            code = "backend_unavailable"
        error_id = logged("backend failure", exc, level=logging.WARNING)
        message = f"{public_backend_error(exc)} (error id {error_id})"
        return {"message": message, "type": "backend_error", "code": code}
    if isinstance(exc, CapabilityError):
        return {"message": scrub(str(exc)), "type": "invalid_request_error",
                "code": "missing_capability"}  # fmt: skip
    if isinstance(exc, RegistryError):
        return {"message": scrub(str(exc)), "type": "invalid_request_error",
                "code": "unknown_name"}  # fmt: skip
    if isinstance(exc, ConfigError):
        return {"message": scrub(str(exc)), "type": "invalid_request_error",
                "code": "invalid_config"}  # fmt: skip
    if isinstance(exc, StoreError):
        error_id = logged("store failure", exc)
        message = f"the service's store is unavailable (error id {error_id})"
        return {"message": message, "type": "store_error", "code": "store_unavailable"}
    if isinstance(exc, APIError):
        return {"message": exc.message, "type": exc.type, "code": exc.code}
    error_id = uuid.uuid4().hex[:12]
    log.error("error id %s: internal error", error_id, exc_info=exc)
    message = f"internal error (error id {error_id}); the details are in the server log"
    return {"message": message, "type": "internal_error", "code": "internal_error"}


_CODE_PHRASES = {"backend_timeout": "timed out", "backend_unavailable": "unavailable"}


def no_answer_error(result: Result) -> dict[str, Any] | None:
    """The error of a run that ended without a candidate because its samples failed (not on its
    budget), else None. A run whose samples came back but held no extractable answer (e.g.
    truncated by a small ``max_tokens``) succeeded with no answer: that is no backend error.

    The ``code`` comes from the last failed backend span of the trace.
    """
    if result.candidate is not None or result.budget_exhausted:
        return None
    if any(not sc.candidate.failed for sc in result.candidates):
        return None
    code = "backend_error"
    for span in _walk(result.trace or {}):
        if span.get("kind") == "backend" and span.get("error"):
            code = backend_error_code(str(span["error"]).split(":", 1)[0])
    reason = str(result.details.get("error") or "every sample failed")
    error_id = logged("run without an answer", reason, level=logging.WARNING)
    backends = sorted(set(re.findall(r"\[([^\]]+)\]", reason))) or ["backend"]
    what = _CODE_PHRASES.get(code, "failed")
    failed = ", ".join(f"[{b}] {what}" for b in backends)
    message = f"no answer: every sample failed: {failed} (error id {error_id})"
    return {"message": message, "type": "backend_error", "code": code}


def _walk(span: dict[str, Any]) -> list[dict[str, Any]]:
    out = [span]
    for child in span.get("children", ()):
        out.extend(_walk(child))
    return out


def validation_error(exc: RequestValidationError) -> APIError:
    """422 naming the first bad field (dotted path without the leading ``body``)."""
    problems = []
    first_param: str | None = None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        param = ".".join(loc) or None
        first_param = first_param or param
        problems.append(f"{param or '(body)'}: {err.get('msg', 'invalid')}")
    code = str(exc.errors()[0].get("type")) if exc.errors() else None
    return APIError(422, "invalid request: " + "; ".join(problems), param=first_param, code=code)


def server_strings(state: Any) -> list[str]:
    """Strings of the server's own setup that no client message may quote: the store URL and
    the configuration paths."""
    settings = getattr(state, "settings", None)
    if settings is None:
        return []
    found = [settings.store_url or "", settings.backends_file or "", settings.strategy_dir or ""]
    found.append(str(settings.catalog().directory))
    store = getattr(state, "run_store", None)
    found += [getattr(store, "url", ""), getattr(store, "masked_url", "")]
    return [s for s in found if s]


def _http_error(request: Request, exc: StarletteHTTPException) -> APIError:
    code = "not_found" if exc.status_code == 404 else None
    message = str(exc.detail)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    if exc.status_code == 404 and message == "Not Found":
        message = f"unknown route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        code, message = "method_not_allowed", f"{request.method} is not allowed here"
    elif exc.status_code == 413:
        code = "body_too_large"
    headers = getattr(exc, "headers", None)
    return APIError(exc.status_code, message, type=kind, code=code, headers=headers)


def public_error(request: Request, exc: Exception) -> APIError:
    """The APIError a client gets for ``exc`` (see the module docstring)."""
    if isinstance(exc, APIError):
        error = exc
    elif isinstance(exc, RequestValidationError):
        error = validation_error(exc)
    elif isinstance(exc, StarletteHTTPException):
        error = _http_error(request, exc)
    else:
        err = error_dict(exc)
        error = APIError(status_for_error(err), err["message"], type=err["type"],
                         code=err["code"])  # fmt: skip
    message = scrub(error.message, server_strings(request.app.state))
    if error.status >= 500 and "error id" not in message:
        error_id = logged(f"{request.method} {request.url.path} answered {error.status}", message)
        message = f"{message} (error id {error_id})"
    error.message = message
    return error


def _handle_exception(request: Request, exc: Exception) -> JSONResponse:
    return public_error(request, exc).response()


async def _handler(request: Request, exc: Exception) -> JSONResponse:
    return _handle_exception(request, exc)


class CatchAllMiddleware:
    """Pure ASGI middleware answering any unhandled exception with a bodied 500.

    Starlette's own 500 path re-raises the exception after responding; this one logs the
    traceback with an error id and answers ``{"error": {...}}`` (if the response has not
    started yet), so no client ever sees a stack trace.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception(
                "internal error %s on %s %s", error_id, scope.get("method"), scope.get("path")
            )
            if started:
                return  # too late for a body: the connection just ends
            response = APIError(
                500,
                f"internal server error (error id {error_id}); the details are in the server log",
                type="internal_error",
                code="internal_error",
            ).response()
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Install the handlers and the catch-all middleware (call before adding other middleware,
    so that outer middleware such as metrics sees the 500s)."""
    for exc_class in (
        APIError,
        RequestValidationError,
        StarletteHTTPException,
        ConfigError,
        RegistryError,
        CapabilityError,
        BackendError,
        StoreError,
    ):
        app.add_exception_handler(exc_class, _handler)
    app.add_middleware(CatchAllMiddleware)
