"""``BodyLimitMiddleware``: request bodies above ``settings.max_body_bytes`` answer 413.

A pure ASGI middleware: a ``Content-Length`` above the limit is answered at once, before any
byte of the body is read; a body sent without one (chunked) is counted as it arrives and the
read that crosses the limit raises ``HTTPException(413)``, which the service's error handler
answers with the standard body (``code="body_too_large"``, ``x-should-retry: false``). Either
way the body is never buffered beyond the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import APIError

TOO_LARGE = "body_too_large"


def too_large(limit: int) -> str:
    """The message of a 413."""
    return f"request body above this service's limit of {limit} bytes (max_body_bytes)"


class BodyLimitMiddleware:
    """Refuse request bodies above ``limit`` bytes (see the module docstring)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            error = APIError(413, too_large(self.limit), code=TOO_LARGE)
            await error.response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, too_large(self.limit))
            return message

        await self.app(scope, counted, send)
