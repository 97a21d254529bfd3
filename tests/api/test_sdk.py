"""Tests for orchestrator.sdk against httpx.MockTransport handlers that follow the service contract.

End-to-end tests against the real app live in tests/api/test_sdk_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from orchestrator.budget import Budget
from orchestrator.retry import parse_retry_after
from orchestrator.sdk import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitError,
    RunFailedError,
    ServerError,
    TTCAPIError,
    TTCConnectionError,
    TTCTimeoutError,
    parse_sse,
)
from orchestrator.sdk.client import MAX_RETRY_AFTER
from orchestrator.sdk.models import RunEvent
from orchestrator.sdk.sse import LineSplitter, SSEDecoder, iter_sse
from orchestrator.sdk.sync import IN_LOOP_MESSAGE
from orchestrator.types import Candidate, Problem, Result, ScoredCandidate, Usage

BASE = "http://ttc.test"
Handler = Callable[[httpx.Request], httpx.Response]


def error(
    status: int,
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """An error answer in the service's body shape."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def result_json(answer: str = "42") -> dict[str, Any]:
    cand = Candidate(text=f"so \\boxed{{{answer}}}", tokens=7, answer=answer, backend="local")
    usage = Usage(prompt_tokens=20, completion_tokens=28, calls=1)
    return Result(
        answer=answer,
        candidate=cand,
        candidates=[ScoredCandidate(candidate=cand)] * 4,
        usage=usage,
        trace={"name": "self_consistency", "kind": "strategy", "children": []},
        strategy="self_consistency",
        details={"votes": {answer: 4}},
        run_id="r1",
    ).model_dump(mode="json")


def record(run_id: str, status: str, **extra: Any) -> dict[str, Any]:
    done = status in ("succeeded", "failed", "cancelled")
    now = "2025-01-01T00:00:00Z"
    rec = {
        "id": run_id,
        "status": status,
        "created_at": now,
        "started_at": now,
        "finished_at": now if done else None,
        "request": {"problem": "q"},
        "result": result_json() if status == "succeeded" else None,
        "usage": {"prompt_tokens": 20, "completion_tokens": 28} if done else None,
        "error": None,
        "key_id": None,
    }
    return rec | extra


def sse(event: str, data: dict[str, Any], seq: int) -> str:
    payload = {"run_id": "r1", "seq": seq, "type": event, "data": data}
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(payload)}\n\n"


EVENTS = (
    ": keep-alive\n\n"
    + sse("status", {"status": "running"}, 0)
    + sse("progress", {"name": "sample", "kind": "backend", "tokens": 28}, 1)
    + sse("result", record("r1", "succeeded"), 2)
)


async def chunked(text: str, size: int = 7) -> AsyncIterator[bytes]:
    """The UTF-8 bytes of ``text`` in small chunks (splitting lines and characters)."""
    data = text.encode()
    for i in range(0, len(data), size):
        yield data[i : i + size]


def sse_response(text: str, size: int = 7) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=chunked(text, size)
    )


class FakeService:
    """A MockTransport handler following the native API contract, recording requests."""

    def __init__(self, statuses: list[str] | None = None, events: str | None = EVENTS) -> None:
        self.requests: list[httpx.Request] = []
        self.statuses = list(statuses or ["succeeded"])
        self.events = events
        self.overrides: dict[str, Handler] = {}

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if (r.method, r.url.path) == (method, path))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        for pattern, handler in self.overrides.items():
            if re.fullmatch(pattern, route):
                return handler(request)
        if route == "POST /v1/reason":
            body = {"run_id": "r1", "status": "succeeded", "result": result_json()}
            return httpx.Response(200, json=body | {"usage": {"calls": 4}})
        if route == "POST /v1/runs":
            links = {"self": "/v1/runs/r1", "events": "/v1/runs/r1/events"}
            return httpx.Response(202, json={"run_id": "r1", "status": "queued", "links": links})
        if route == "GET /v1/runs":
            return httpx.Response(200, json={"object": "list", "data": [record("r1", "running")]})
        if route == "GET /v1/runs/r1/events" and self.events is not None:
            return sse_response(self.events)
        if route == "GET /v1/runs/r1":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return httpx.Response(200, json=record("r1", status))
        if route == "DELETE /v1/runs/r1":
            return httpx.Response(200, json=record("r1", "cancelled"))
        if route == "GET /healthz":
            return httpx.Response(200, json={"status": "ok"})
        if route == "GET /v1/strategies":
            item = {"name": "self_consistency", "description": "vote", "since": "0.1"}
            items = [item | {"config_schema": {"type": "object"}, "requires": ["logprobs"]}]
            return httpx.Response(200, json={"object": "list", "data": items})
        if route == "GET /v1/verifiers":
            return httpx.Response(200, json=[{"name": "majority_vote", "schema": {}}])
        if request.url.path.startswith("/v1/runs/"):
            run_id = request.url.path.split("/")[3]
            return error(404, f"unknown run {run_id!r}", "invalid_request_error", code="not_found")
        return error(404, f"unknown route {route}", "invalid_request_error", code="not_found")


def client(handler: Handler, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("max_retries", 0)
    return AsyncClient(BASE, transport=httpx.MockTransport(handler), **kwargs)


# --- requests and typed answers ----------------------------------------------------------------


async def test_reason_sends_the_request_and_parses_the_result() -> None:
    svc = FakeService()
    async with client(svc, api_key="ttc-secret") as ttc:
        run = await ttc.reason(
            Problem(question="What is 6*7?", system_prompt="Be brief."),
            {"strategy": "self_consistency", "n": 4},
            Budget(max_completion_tokens=500),
            backend="local",
            model="other-model",
            seed=3,
            include_trace=False,
        )
    req = svc.requests[0]
    assert req.headers["authorization"] == "Bearer ttc-secret"
    body = json.loads(req.content)
    assert body["problem"]["question"] == "What is 6*7?"
    assert body["problem"]["system_prompt"] == "Be brief."
    assert body["strategy"] == {"strategy": "self_consistency", "n": 4}
    assert body["budget"] == {"max_completion_tokens": 500}  # unset limits are left out
    assert (body["backend"], body["model"], body["seed"]) == ("local", "other-model", 3)
    assert body["options"] == {"include_trace": False}
    assert isinstance(run.result, Result)
    assert run.answer == "42" and run.run_id == "r1" and run.status == "succeeded"
    assert run.result.candidate is not None and run.result.candidate.tokens == 7
    assert run.result.details["votes"] == {"42": 4}
    assert run.usage == Usage(calls=4)


async def test_reason_minimal_body_and_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_API_KEY", "ttc-from-env")
    svc = FakeService()
    async with client(svc) as ttc:
        await ttc.reason("What is 6*7?")
    assert json.loads(svc.requests[0].content) == {"problem": "What is 6*7?"}
    assert svc.requests[0].headers["authorization"] == "Bearer ttc-from-env"
    monkeypatch.delenv("TTC_API_KEY")
    async with client(svc) as ttc:
        await ttc.health()
    assert "authorization" not in svc.requests[-1].headers


async def test_reason_usage_falls_back_to_the_results() -> None:
    svc = FakeService()
    svc.overrides["POST /v1/reason"] = lambda r: httpx.Response(
        200, json={"run_id": "r9", "status": "succeeded", "result": result_json("7")}
    )
    async with client(svc) as ttc:
        run = await ttc.reason("q")
    assert run.answer == "7" and run.usage.completion_tokens == 28


async def test_reason_with_a_failed_run_raises_run_failed() -> None:
    svc = FakeService()
    err = {"message": "backend down", "type": "backend_error", "code": "backend_unavailable"}
    svc.overrides["POST /v1/reason"] = lambda r: httpx.Response(
        200, json={"run_id": "r2", "status": "failed", "result": None, "error": err}
    )
    async with client(svc) as ttc:
        with pytest.raises(RunFailedError) as info:
            await ttc.reason("q")
    assert info.value.run_id == "r2" and info.value.run_status == "failed"
    assert info.value.type == "backend_error" and "backend down" in str(info.value)


async def test_runs_catalogue_and_health() -> None:
    svc = FakeService()
    async with client(svc) as ttc:
        assert await ttc.create_run("q", "self_consistency") == "r1"
        info = await ttc.get_run("r1")
        assert info.id == "r1" and info.done and info.answer == "42"
        assert info.usage is not None and info.usage.completion_tokens == 28
        runs = await ttc.list_runs(limit=5, status="running")
        assert [r.status for r in runs] == ["running"] and not runs[0].done
        assert (await ttc.cancel("r1")).status == "cancelled"
        strategies = await ttc.strategies()
        assert strategies[0].name == "self_consistency"
        assert strategies[0].config_schema == {"type": "object"}
        assert strategies[0].requires == ["logprobs"] and strategies[0].kind == "strategy"
        assert strategies[0].model_extra == {"since": "0.1"}  # unknown fields are kept
        verifiers = await ttc.verifiers()
        assert verifiers[0].name == "majority_vote"
        assert await ttc.health() == {"status": "ok"}
    listing = next(r for r in svc.requests if r.url.path == "/v1/runs" and r.method == "GET")
    assert dict(listing.url.params) == {"limit": "5", "status": "running"}
    assert json.loads(svc.requests[0].content) == {"problem": "q", "strategy": "self_consistency"}


# --- errors ------------------------------------------------------------------------------------

ERRORS = [
    (400, "invalid_request_error", BadRequestError),
    (401, "authentication_error", AuthenticationError),
    (404, "invalid_request_error", NotFoundError),
    (409, "invalid_request_error", ConflictError),
    (422, "invalid_request_error", BadRequestError),
    (429, "rate_limit_error", RateLimitError),
    (500, "internal_error", ServerError),
    (502, "backend_error", ServerError),
    (503, "backend_error", ServerError),
    (504, "backend_error", ServerError),
]


@pytest.mark.parametrize(("status", "type", "cls"), ERRORS)
async def test_error_bodies_map_to_exceptions(
    status: int, type: str, cls: type[TTCAPIError]
) -> None:
    headers = {"Retry-After": "7"} if status == 429 else None
    resp = error(status, "it went wrong", type, "budget.max_calls", "c1", headers)
    async with client(lambda r: resp) as ttc:
        with pytest.raises(cls) as info:
            await ttc.reason("q")
    exc = info.value
    fields = (exc.status, exc.type, exc.message, exc.param, exc.code)
    assert fields == (status, type, "it went wrong", "budget.max_calls", "c1")
    assert str(exc) == f"{status} {type}: it went wrong (param: budget.max_calls)"
    assert exc.retry_after == (7.0 if status == 429 else None)
    assert exc.body == json.loads(resp.content)


async def test_error_answers_that_are_not_ttc_bodies() -> None:
    html = httpx.Response(502, text="<html>Bad Gateway</html>")
    async with client(lambda r: html) as ttc:
        with pytest.raises(ServerError) as info:
            await ttc.health()
    assert info.value.type == "server_error" and "Bad Gateway" in info.value.message
    plain = httpx.Response(404, json={"detail": "Not Found"})
    async with client(lambda r: plain) as ttc:
        with pytest.raises(NotFoundError, match="Not Found"):
            await ttc.get_run("x")
    teapot = httpx.Response(418)
    async with client(lambda r: teapot) as ttc:
        with pytest.raises(TTCAPIError) as info2:
            await ttc.health()
    assert type(info2.value) is TTCAPIError and info2.value.status == 418
    not_json = httpx.Response(200, text="ok")
    async with client(lambda r: not_json) as ttc:
        with pytest.raises(TTCAPIError, match="not JSON"):
            await ttc.health()


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90.0)
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


async def test_transport_failures_map_to_timeout_and_connection_errors() -> None:
    async with client(raising(httpx.ReadTimeout("read timed out"))) as ttc:
        with pytest.raises(TTCTimeoutError, match="timed out") as info:
            await ttc.reason("q")
    assert info.value.status is None and isinstance(info.value.__cause__, httpx.ReadTimeout)
    async with client(raising(httpx.ConnectError("connection refused"))) as ttc:
        with pytest.raises(TTCConnectionError, match="cannot reach"):
            await ttc.get_run("r1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_by_a_real_socket() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", max_retries=0, timeout=5) as ttc:
        with pytest.raises(TTCConnectionError) as info:
            await ttc.health()
    assert isinstance(info.value.__cause__, httpx.ConnectError)


# --- retries -----------------------------------------------------------------------------------


def flaky(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering ``responses`` in turn (raising the exceptions), then 200 ok."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if queue:
            item = queue.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        return httpx.Response(200, json={"status": "ok", "run_id": "r1"})

    return handler, seen


async def test_idempotent_requests_retry_transient_failures() -> None:
    busy = error(503, "busy", "backend_error", headers={"Retry-After": "0"})
    limited = error(429, "slow down", "rate_limit_error", headers={"Retry-After": "0"})
    handler, seen = flaky(busy, limited)
    async with client(handler, max_retries=2) as ttc:
        assert await ttc.health() == {"status": "ok", "run_id": "r1"}
    assert len(seen) == 3
    handler, seen = flaky(busy, busy, busy)
    async with client(handler, max_retries=2) as ttc:
        with pytest.raises(ServerError):
            await ttc.health()
    assert len(seen) == 3
    far = error(429, "tomorrow", "rate_limit_error", headers={"Retry-After": "86400"})
    handler, seen = flaky(far)
    async with client(handler, max_retries=2) as ttc:
        with pytest.raises(RateLimitError) as info:
            await ttc.health()
    assert len(seen) == 1 and info.value.retry_after == 86400 > MAX_RETRY_AFTER


async def test_posts_are_retried_only_when_never_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.sdk.client.backoff", lambda attempt, err: 0.0)
    handler, seen = flaky(error(503, "busy", "backend_error", headers={"Retry-After": "0"}))
    async with client(handler, max_retries=2) as ttc:
        with pytest.raises(ServerError):
            await ttc.create_run("q")
    assert len(seen) == 1  # the run may have started: never POST it twice
    handler, seen = flaky(httpx.ReadTimeout("slow"))
    async with client(handler, max_retries=2) as ttc:
        with pytest.raises(TTCTimeoutError):
            await ttc.create_run("q")
    assert len(seen) == 1
    handler, seen = flaky(httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"))
    async with client(handler, max_retries=2) as ttc:
        assert await ttc.create_run("q") == "r1"
    assert len(seen) == 3
    handler, seen = flaky(httpx.ReadError("reset"))
    async with client(handler, max_retries=1) as ttc:
        assert (await ttc.health())["status"] == "ok"
    assert len(seen) == 2


# --- server-sent events ------------------------------------------------------------------------


def test_sse_parsing_rules() -> None:
    text = (
        ": a comment\n"
        "event: progress\n"
        "id: 5\n"
        "data: line one\n"
        "data:line two\n"
        "data:  two spaces\n"
        "\n"
        "data\n"  # a field name alone: empty data
        "\n"
        "event: nothing\n"  # no data: not dispatched
        "\n"
        "retry: 100\r\n"
        "data: crlf\r\n"
        "\r\n"
        "data: cr only\r\r"
        "unknown: field\n"
        "data: dropped at the end of the stream\n"
    )
    events = parse_sse(text)
    assert [(e.event, e.data, e.id) for e in events] == [
        ("progress", "line one\nline two\n two spaces", "5"),
        ("message", "", "5"),  # the last event id persists
        ("message", "crlf", "5"),
        ("message", "cr only", "5"),
    ]


def test_sse_line_splitter_handles_chunk_boundaries() -> None:
    splitter = LineSplitter()
    assert splitter.feed("data: a\r") == ["data: a"]
    assert splitter.feed("\ndata: b") == []  # the LF completing the CRLF is not a blank line
    assert splitter.feed("\u2028c\n\n") == ["data: b\u2028c", ""]  # U+2028 is data
    decoder = SSEDecoder()
    assert decoder.feed("id: x\0y") is None and decoder.feed("data: 1") is None
    event = decoder.feed("")
    assert event is not None and (event.data, event.id) == ("1", None)  # an id with NUL: ignored
    assert decoder.feed("") is None  # nothing pending
    assert parse_sse("id: 3\ndata: 1\n\nid: a\0b\ndata: 2\n\n")[1].id == "3"


async def test_iter_sse_over_odd_chunks() -> None:
    text = 'event: result\ndata: {"x": "\u00e9\u2028"}\n\n'

    async def pieces() -> AsyncIterator[str]:
        for ch in text:
            yield ch

    events = [e async for e in iter_sse(pieces())]
    assert len(events) == 1 and json.loads(events[0].data) == {"x": "\u00e9\u2028"}


async def test_events_stream_parses_run_events() -> None:
    svc = FakeService(events=EVENTS + sse("status", {"never": "read"}, 3))
    async with client(svc) as ttc:
        events = [e async for e in ttc.events("r1")]
    assert [(e.seq, e.type) for e in events] == [(0, "status"), (1, "progress"), (2, "result")]
    assert events[1].data["tokens"] == 28 and events[-1].terminal and not events[0].terminal
    assert all(e.run_id == "r1" for e in events)
    req = svc.requests[0]
    assert req.headers["accept"] == "text/event-stream"


def test_run_event_from_sse_shapes() -> None:
    bare = RunEvent.from_sse("r1", "progress", '{"name": "vote"}', "4", 0)
    assert (bare.seq, bare.type, bare.data) == (4, "progress", {"name": "vote"})
    no_seq = RunEvent.from_sse(
        "r1", "error", '{"type": "error", "data": {"message": "x"}}', None, 2
    )
    assert (no_seq.seq, no_seq.type, no_seq.data) == (2, "error", {"message": "x"})
    scalar = RunEvent.from_sse("r1", "message", "3", None, 0)
    assert scalar.data == {"value": 3}
    with pytest.raises(TTCAPIError, match="not JSON"):
        RunEvent.from_sse("r1", "progress", "{oops", None, 0)


async def test_events_of_an_unknown_run_raise_not_found() -> None:
    svc = FakeService()
    async with client(svc) as ttc:
        with pytest.raises(NotFoundError, match="unknown run 'nope'"):
            async for _ in ttc.events("nope"):
                pass
        with pytest.raises(NotFoundError):
            await ttc.get_run("../healthz?x=1")
    assert svc.requests[-1].url.raw_path == b"/v1/runs/..%2Fhealthz%3Fx%3D1"


# --- wait --------------------------------------------------------------------------------------


async def test_wait_follows_the_event_stream() -> None:
    svc = FakeService(statuses=["running"])  # a poll would never finish
    async with client(svc) as ttc:
        info = await ttc.wait("r1", timeout=5)
    assert info.status == "succeeded" and info.answer == "42"
    assert svc.count("GET", "/v1/runs/r1/events") == 1
    assert svc.count("GET", "/v1/runs/r1") == 0  # the final event carries the final record


@pytest.mark.parametrize("final", [{"status": "succeeded"}, record("other", "succeeded")])
async def test_wait_reads_the_record_when_the_final_event_lacks_it(final: dict[str, Any]) -> None:
    svc = FakeService(statuses=["succeeded"], events=sse("result", final, 0))
    async with client(svc) as ttc:
        info = await ttc.wait("r1", timeout=5)
    assert info.status == "succeeded" and info.id == "r1"
    assert svc.count("GET", "/v1/runs/r1") == 1  # one read of the final record, no polling


@pytest.mark.parametrize(
    "events_answer",
    [
        lambda r: error(404, "unknown route", "invalid_request_error", code="not_found"),
        lambda r: sse_response(sse("status", {"status": "running"}, 0)),  # ends too early
        lambda r: error(503, "busy", "service_unavailable"),
        raising(httpx.RemoteProtocolError("peer closed connection")),
    ],
    ids=["no-route", "cut-short", "unavailable", "broken"],
)
async def test_wait_falls_back_to_polling(events_answer: Handler) -> None:
    svc = FakeService(statuses=["queued", "running", "running", "succeeded"])
    svc.overrides[r"GET /v1/runs/r1/events"] = events_answer
    async with client(svc) as ttc:
        info = await ttc.wait("r1", timeout=5, poll=0.001)
    assert info.status == "succeeded"
    assert svc.count("GET", "/v1/runs/r1") == 4


async def test_wait_polling_only_and_unknown_runs() -> None:
    svc = FakeService(statuses=["running", "failed"])
    async with client(svc) as ttc:
        info = await ttc.wait("r1", poll=0.001, stream=False)
        assert info.status == "failed" and info.answer is None
        with pytest.raises(NotFoundError):
            await ttc.wait("ghost", timeout=5, poll=0.001)
    assert svc.count("GET", "/v1/runs/r1/events") == 0


async def test_wait_times_out_while_the_run_keeps_going() -> None:
    svc = FakeService(statuses=["running"], events=None)
    async with client(svc) as ttc:
        with pytest.raises(TTCTimeoutError, match=r"did not finish within 0\.05s"):
            await ttc.wait("r1", timeout=0.05, poll=0.005)


async def test_wait_does_not_paper_over_auth_errors() -> None:
    svc = FakeService()
    svc.overrides[r"GET /v1/runs/r1/events"] = lambda r: error(
        401, "bad key", "authentication_error"
    )
    async with client(svc) as ttc:
        with pytest.raises(AuthenticationError):
            await ttc.wait("r1", timeout=5)
    assert svc.count("GET", "/v1/runs/r1") == 0


# --- the sync client ---------------------------------------------------------------------------


def test_sync_client_without_an_event_loop() -> None:
    svc = FakeService()
    with Client(BASE, transport=httpx.MockTransport(svc), max_retries=0) as ttc:
        assert ttc.reason("q").answer == "42"
        assert [e.type for e in ttc.events("r1")] == ["status", "progress", "result"]
        assert ttc.wait("r1", timeout=5).status == "succeeded"
        assert ttc.create_run("q") == "r1" and ttc.cancel("r1").status == "cancelled"
        assert ttc.health() == {"status": "ok"}
        with pytest.raises(NotFoundError):
            ttc.get_run("ghost")
        thread = ttc._thread
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        ttc.health()
    ttc.close()  # idempotent


def test_sync_client_from_worker_threads() -> None:
    svc = FakeService()
    out: list[str | None] = []
    with Client(BASE, transport=httpx.MockTransport(svc), max_retries=0) as ttc:
        workers = [
            threading.Thread(target=lambda: out.append(ttc.reason("q").answer)) for _ in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
        # an event stream left half-read is closed when the iterator is closed
        stream = ttc.events("r1")
        assert next(stream).type == "status"
        stream.close()
    assert out == ["42"] * 4


async def test_sync_client_inside_a_running_loop_points_to_async_client() -> None:
    with Client(BASE, transport=httpx.MockTransport(FakeService()), max_retries=0) as ttc:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "coroutine was never awaited"
            with pytest.raises(RuntimeError, match="AsyncClient") as info:
                ttc.reason("q")
        assert str(info.value) == IN_LOOP_MESSAGE
        # it still works from a thread of this process that has no loop
        assert await asyncio.to_thread(lambda: ttc.health()) == {"status": "ok"}
        await asyncio.to_thread(ttc.close)


def test_sync_client_mirrors_the_async_client() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")}

    assert public(AsyncClient) - {"aclose"} <= public(Client)


# --- lazy package exports ----------------------------------------------------------------------


def test_package_root_exports_are_lazy() -> None:
    code = """
import sys
import orchestrator
assert not any(m.startswith("orchestrator.") for m in sys.modules), sorted(sys.modules)
from orchestrator import AsyncClient, Client
heavy = ("vllm", "fastapi", "starlette", "torch", "openai", "orchestrator.runner", "strategies")
assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
from orchestrator import Orchestrator, Budget, Problem, Result, Usage, TTCAPIError
assert "vllm" not in sys.modules and "fastapi" not in sys.modules
from orchestrator.sdk import Client as C2
from orchestrator.runner import Orchestrator as O2
assert Client is C2 and Orchestrator is O2
assert {"Client", "AsyncClient", "Orchestrator"} <= set(dir(orchestrator))
assert set(orchestrator.__all__) <= set(dir(orchestrator))
try:
    orchestrator.nope
except AttributeError as exc:
    assert "nope" in str(exc)
else:
    raise AssertionError("no AttributeError")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
