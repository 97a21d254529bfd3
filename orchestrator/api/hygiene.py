"""Error hygiene: what a client may read of an error, and the error ids the log keeps.

Clients never see base URLs, upstream response bodies, database hosts or the contents of the
operator's files:

* :func:`public_backend_error`: a backend failure as ``[backend] timed out`` (or
  ``unavailable``, ``sent an invalid response``, ``rejected the request``; with the upstream
  HTTP status when there was one), never the URL or the upstream message;
* :func:`scrub`: any other message with every URL replaced by ``<url>`` and the given server
  strings (store URL, configuration paths) by ``<server path>``;
* :func:`scrub_errors`: every ``"error"`` string inside a JSON document (a stored Result's
  trace spans, failed candidates, verifier score details; progress events) rewritten the same
  way, so a trace shows which call failed and how, not where it was sent.

:func:`logged` gives a new error id, logs the full details under it (``ERROR id <id>: ...`` in
the server log) and returns it; every 5xx answer quotes one, so an operator can find the cause.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

from orchestrator.errors import (
    BackendError,
    BackendProtocolError,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
)

log = logging.getLogger("orchestrator.api.errors")

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>),;]+")
_BACKEND_MESSAGE = re.compile(r"^(?:(?P<cls>\w+): )?\[(?P<backend>[^\]]*)\] (?P<rest>.*)$", re.S)
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_WHAT = {
    BackendTimeout.__name__: "timed out",
    BackendUnavailable.__name__: "unavailable",
    BackendProtocolError.__name__: "sent an invalid response",
    BackendRequestError.__name__: "rejected the request",
}


def logged(what: str, detail: object, *, level: int = logging.ERROR) -> str:
    """Log ``detail`` under a new error id (with ``what`` happened) and return the id."""
    error_id = uuid.uuid4().hex[:12]
    log.log(level, "error id %s: %s: %s", error_id, what, detail)
    return error_id


def _phrase(cls: str | None, rest: str) -> str:
    what = _WHAT.get(cls or "", "timed out" if "timed out" in rest else "failed")
    status = _HTTP_STATUS.search(rest)
    return f"{what} (HTTP {status.group(1)})" if status and what != "timed out" else what


def public_backend_error(exc: BackendError) -> str:
    """``[backend] <what happened>`` for a backend failure (see the module docstring)."""
    return f"[{exc.backend or 'backend'}] {_phrase(type(exc).__name__, str(exc))}"


def scrub(text: str, server_strings: Iterable[str] = ()) -> str:
    """``text`` with backend failure details, URLs and ``server_strings`` removed."""
    match = _BACKEND_MESSAGE.match(text)
    if match and (match.group("cls") or "Backend").startswith("Backend"):
        cls = match.group("cls")
        head = f"{cls}: " if cls else ""
        return f"{head}[{match.group('backend')}] {_phrase(cls, match.group('rest'))}"
    for secret in sorted({s for s in server_strings if s and len(s) > 3}, key=len, reverse=True):
        text = text.replace(secret, "<server path>")
    return _URL.sub("<url>", text)


def scrub_errors(data: Any, server_strings: Iterable[str] = ()) -> Any:
    """A copy of the JSON ``data`` whose ``"error"`` strings are :func:`scrub`-bed."""
    strings = tuple(server_strings)
    if isinstance(data, dict):
        return {
            k: scrub(v, strings) if k == "error" and isinstance(v, str)
            else scrub_errors(v, strings)
            for k, v in data.items()
        }  # fmt: skip
    if isinstance(data, list):
        return [scrub_errors(v, strings) for v in data]
    return data
