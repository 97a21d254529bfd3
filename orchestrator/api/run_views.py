"""How the native API shows runs: results per the run's options, the SSE encoding of events,
and the answer models documented in the OpenAPI schema.

* A stored Result is shown without its trace when the run's ``options.include_trace`` is false
  and without token logprobs unless ``options.include_logprobs`` (the RunManager already drops
  logprobs it was not asked to keep; this is the read-side guarantee).
* Events are sent as ``id: <seq>``, ``event: <type>``, ``data: <RunEvent JSON>`` (the whole
  event: ``run_id``, ``seq``, ``type``, ``data``); a ``result`` payload's Result is shown as
  above. A comment line ``: keep-alive`` is sent every ``HEARTBEAT_SECONDS`` while idle, so
  proxies keep the stream open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from orchestrator.api.policy import public_spec
from orchestrator.store.run_store import RunRecord

if TYPE_CHECKING:
    from orchestrator.api.runs import RunEvent

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
TERMINAL_EVENTS = frozenset({"result", "error"})


class RunCreated(BaseModel):
    """202 answer of a background run (OpenAPI documentation only)."""

    run_id: str
    status: Literal["queued"] = "queued"
    links: dict[str, str]


class ReasonAnswer(BaseModel):
    """200 answer of ``POST /v1/reason`` (OpenAPI documentation only)."""

    run_id: str
    status: Literal["succeeded"] = "succeeded"
    result: dict[str, Any]
    usage: dict[str, Any] | None


class RunList(BaseModel):
    """``GET /v1/runs`` (OpenAPI documentation only)."""

    object: Literal["list"] = "list"
    data: list[RunRecord]


# -- results -----------------------------------------------------------------------------------


def present_result(result: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
    """A stored Result dict as the API shows it: without the trace when
    ``options["include_trace"]`` is false, without token logprobs unless
    ``options["include_logprobs"]``. Never mutates ``result``."""
    if result is None:
        return None
    out = dict(result)
    if not options.get("include_trace", True):
        out["trace"] = None
    if not options.get("include_logprobs", False):
        if isinstance(out.get("candidate"), Mapping):
            out["candidate"] = {**out["candidate"], "logprobs": None}
        out["candidates"] = [
            {**sc, "candidate": {**sc["candidate"], "logprobs": None}}
            if isinstance(sc, Mapping) and isinstance(sc.get("candidate"), Mapping)
            else sc
            for sc in out.get("candidates") or []
        ]
    return out


def run_options(record: RunRecord) -> Mapping[str, Any]:
    options = record.request.get("options")
    return options if isinstance(options, Mapping) else {}


def present_request(request: Any) -> Any:
    """A stored request as clients see it: the spec's privileged values redacted."""
    if not isinstance(request, Mapping) or not isinstance(request.get("strategy"), Mapping):
        return request
    return {**request, "strategy": public_spec(request["strategy"])}


def present_record(record: RunRecord, *, with_result: bool = True) -> dict[str, Any]:
    """A RunRecord as JSON, its result presented per the run's own request options and its
    request per ``present_request``."""
    data = record.model_dump(mode="json")
    data["result"] = present_result(record.result, run_options(record)) if with_result else None
    data["request"] = present_request(data["request"])
    return data


# -- events ------------------------------------------------------------------------------------


def format_event(event: RunEvent, options: Mapping[str, Any]) -> str:
    """One SSE message for ``event``; a ``result`` payload is presented per ``options``."""
    payload = event.model_dump(mode="json")
    data = payload.get("data")
    if isinstance(data, dict) and isinstance(data.get("result"), Mapping):
        payload["data"] = {**data, "result": present_result(data["result"], options)}
    if isinstance(data, dict) and "request" in data:
        payload["data"] = {**payload["data"], "request": present_request(data["request"])}
    text = json.dumps(payload, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {text}\n\n"


async def sse_stream(
    events: AsyncIterator[RunEvent], options: Mapping[str, Any], after: int = -1
) -> AsyncIterator[str]:
    """SSE text for ``events`` with ``seq > after``, heartbeats while idle; ends after the
    terminal event, or early (logged) when reading ``events`` fails, so that the client falls
    back to polling. Closing this generator (client gone) stops reading ``events`` only; it
    never cancels the run."""
    queue: asyncio.Queue[RunEvent | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    reader = asyncio.ensure_future(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, BaseException):  # a broken stream is not a failed run: end it
                log.error("event stream failed", exc_info=item)  # without a terminal event
                return
            if item.seq <= after:
                continue
            yield format_event(item, options)
            if item.type in TERMINAL_EVENTS:
                return
    finally:
        reader.cancel()
        await asyncio.wait({reader})
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
