"""The native API: /v1/reason, /v1/runs (+ events, cancel), registries, health and readiness."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Message

from orchestrator.api import run_views
from orchestrator.api.run_views import present_result, sse_stream
from orchestrator.api.runs import RunEvent
from orchestrator.backends.openai_compat import OpenAICompatBackend
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.testing.fake_openai_server import FakeOpenAIServer
from tests.api.native_app import Service, create_app, serve, settings_for, sse_events

SC4 = {"strategy": "self_consistency", "n": 4}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error object of an error response, after checking the body shape."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


async def wait_status(svc: Service, run_id: str, *statuses: str) -> dict[str, Any]:
    """Poll GET /v1/runs/{id} until its status is one of ``statuses`` (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        record = (await svc.client.get(f"/v1/runs/{run_id}")).json()
        if record["status"] in statuses or time.monotonic() > deadline:
            return dict(record)
        await asyncio.sleep(0.02)


async def running_run_id(svc: Service) -> str:
    """The id of the one running run (waits up to 5 s for it to start)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        runs = (await svc.client.get("/v1/runs", params={"status": "running"})).json()["data"]
        if runs:
            return str(runs[0]["id"])
        await asyncio.sleep(0.02)
    raise AssertionError("no run started")


# -- POST /v1/reason ---------------------------------------------------------------------------


async def test_reason_returns_the_full_result_with_candidates_scores_and_trace(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path, FakeBackend(name="local", answers=["42"])) as svc:
        body = {
            "problem": "What is 6*7?",
            "strategy": {"strategy": "best_of_n", "n": 3, "verifier": "mean_logprob"},
            "seed": 1,
        }
        response = await svc.client.post("/v1/reason", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"run_id", "status", "result", "usage"}
    assert data["status"] == "succeeded"
    result = data["result"]
    assert result["answer"] == "42" and result["strategy"] == "best_of_n"
    assert result["run_id"] == data["run_id"]
    assert len(result["candidates"]) == 3
    assert all(sc["scores"][0]["verifier"] == "mean_logprob" for sc in result["candidates"])
    assert all(sc["candidate"]["logprobs"] is None for sc in result["candidates"])  # not asked
    trace = result["trace"]
    assert trace["kind"] == "run" and trace["children"][0]["name"] == "best_of_n"
    backend_spans = [c for c in trace["children"][0]["children"] if c["kind"] == "backend"]
    assert sum(s["completion_tokens"] for s in backend_spans) == data["usage"]["completion_tokens"]
    assert data["usage"]["completion_tokens"] > 0 and data["usage"]["calls"] >= 1


async def test_reason_options_drop_the_trace_and_keep_logprobs(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        body = {
            "problem": {"question": "What is 6*7?", "answer_format": "boxed"},
            "strategy": {"strategy": "best_of_n", "n": 2},
            "options": {"include_trace": False, "include_logprobs": True},
        }
        data = (await svc.client.post("/v1/reason", json=body)).json()
        assert data["result"]["trace"] is None
        assert data["result"]["candidates"][0]["candidate"]["logprobs"]
        stored = (await svc.client.get(f"/v1/runs/{data['run_id']}")).json()
    assert stored["result"]["trace"] is None  # the run's own options apply to reads too
    assert stored["request"]["options"] == {"include_trace": False, "include_logprobs": True}


def test_present_result_never_mutates_the_stored_result() -> None:
    cand = {"text": "x", "logprobs": [{"token": "x", "logprob": -1.0}]}
    stored = {"trace": {"kind": "run"}, "candidate": cand, "candidates": [{"candidate": cand}]}
    shown = present_result(stored, {"include_trace": False})
    assert shown["trace"] is None and shown["candidate"]["logprobs"] is None
    assert shown["candidates"][0]["candidate"]["logprobs"] is None
    assert stored["trace"] == {"kind": "run"} and cand["logprobs"]


async def test_reason_bad_requests_name_the_problem(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        unknown = await svc.client.post("/v1/reason", json={"problem": "q", "strategy": "nope"})
        invalid = await svc.client.post("/v1/reason", json={"problem": "q", "budget": {"x": 1}})
        missing = await svc.client.post("/v1/reason", json={"strategy": "single"})
    assert unknown.status_code == 400
    assert "self_consistency" in error_of(unknown)["message"]  # lists the available ones
    assert invalid.status_code == 422 and error_of(invalid)["param"] == "budget.x"
    assert missing.status_code == 422 and error_of(missing)["param"] == "problem"


async def test_reason_answers_a_backend_failure_with_503(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", fail_rate=1.0)) as svc:
        response = await svc.client.post("/v1/reason", json={"problem": "q", "strategy": "single"})
        run_id = (await svc.client.get("/v1/runs")).json()["data"][0]["id"]
        record = (await svc.client.get(f"/v1/runs/{run_id}")).json()
    assert response.status_code == 503
    assert error_of(response)["type"] == "backend_error"
    assert error_of(response)["code"] == "backend_unavailable"
    assert record["status"] == "failed" and record["error"]["code"] == "backend_unavailable"


async def test_a_sync_run_cancelled_by_delete_answers_409(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", latency=5.0)) as svc:
        pending = asyncio.create_task(
            svc.client.post("/v1/reason", json={"problem": "q", "strategy": "single"})
        )
        run_id = await running_run_id(svc)
        cancelled = await svc.client.delete(f"/v1/runs/{run_id}")
        response = await asyncio.wait_for(pending, 5)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert response.status_code == 409 and error_of(response)["code"] == "run_cancelled"


async def test_a_client_that_disconnects_cancels_its_sync_run(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", latency=5.0)) as svc:
        body = json.dumps({"problem": "q", "strategy": "single"}).encode()
        inbox: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]
        gone = asyncio.Event()
        sent: list[Message] = []

        async def receive() -> Message:
            if inbox:
                return inbox.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/reason", "raw_path": b"/v1/reason",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
            "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        }  # fmt: skip
        call = asyncio.create_task(svc.app(scope, receive, send))
        run_id = await running_run_id(svc)
        gone.set()
        await asyncio.wait_for(call, 5)
        record = await wait_status(svc, run_id, "cancelled")
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert record["status"] == "cancelled"
    assert "disconnected" in record["error"]["message"]


# -- background runs, events, cancel -----------------------------------------------------------


async def test_async_run_get_and_events(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", latency=0.3)) as svc:
        body = {"problem": "q", "strategy": SC4}
        created = await svc.client.post("/v1/reason?async=true", json=body)
        assert created.status_code == 202
        run_id = created.json()["run_id"]
        assert created.json()["status"] == "queued"
        assert created.headers["location"] == f"/v1/runs/{run_id}"
        assert created.json()["links"]["events"] == f"/v1/runs/{run_id}/events"
        url = f"/v1/runs/{run_id}/events"
        stream, resumed = await asyncio.gather(  # both follow the live run
            svc.client.get(url), svc.client.get(url, headers={"Last-Event-ID": "1"})
        )
        record = await wait_status(svc, run_id, "succeeded")
        replay = await svc.client.get(url)  # finished: its final event only
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = sse_events(stream.text)
    types = [e["event"] for e in events]
    assert types[0] == "status" and events[0]["data"]["data"] == {"status": "queued"}
    assert types[1] == "status" and events[1]["data"]["data"] == {"status": "running"}
    assert types[-1] == "result" and "progress" in types
    assert [int(e["id"]) for e in events] == list(range(len(events)))
    assert all(e["data"]["run_id"] == run_id for e in events)
    assert events[-1]["data"]["data"]["result"]["answer"] == record["result"]["answer"]
    backend_progress = [e for e in events if e["data"]["data"].get("kind") == "backend"]
    assert len(backend_progress) == record["usage"]["calls"]
    assert [e["id"] for e in sse_events(resumed.text)] == [e["id"] for e in events[2:]]
    assert [e["event"] for e in sse_events(replay.text)] == ["result"]
    assert record["result"]["candidates"] and record["usage"]["completion_tokens"] > 0


async def test_post_runs_then_delete_cancels_an_in_flight_run(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", latency=5.0)) as svc:
        created = await svc.client.post("/v1/runs", json={"problem": "q", "strategy": SC4})
        assert created.status_code == 202
        run_id = created.json()["run_id"]
        await wait_status(svc, run_id, "running")
        t0 = time.monotonic()
        deleted = await svc.client.delete(f"/v1/runs/{run_id}")
        assert time.monotonic() - t0 < 2  # the backend call was cut short
        again = await svc.client.delete(f"/v1/runs/{run_id}")
        events = sse_events((await svc.client.get(f"/v1/runs/{run_id}/events")).text)
        stored = await svc.state.run_store.get(run_id)
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "cancelled"
    assert deleted.json()["error"]["type"] == "cancelled"
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent
    assert [e["event"] for e in events] == ["error"]
    assert stored is not None and stored.status == "cancelled"


async def test_unknown_runs_answer_404_in_the_error_body(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        answers = [
            await svc.client.get("/v1/runs/nope"),
            await svc.client.delete("/v1/runs/nope"),
            await svc.client.get("/v1/runs/nope/events"),
        ]
    for response in answers:
        assert response.status_code == 404
        err = error_of(response)
        assert "nope" in err["message"] and err["code"] == "not_found"


async def test_list_runs_newest_first_with_limit_and_status(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        first = await svc.client.post("/v1/reason", json={"problem": "a", "strategy": "single"})
        second = await svc.client.post("/v1/reason", json={"problem": "b", "strategy": "single"})
        listed = (await svc.client.get("/v1/runs", params={"limit": 1})).json()
        succeeded = (await svc.client.get("/v1/runs", params={"status": "succeeded"})).json()
        failed = (await svc.client.get("/v1/runs", params={"status": "failed"})).json()
        bad = await svc.client.get("/v1/runs", params={"status": "done", "limit": 0})
    assert listed["object"] == "list" and len(listed["data"]) == 1
    assert listed["data"][0]["id"] == second.json()["run_id"]
    assert listed["data"][0]["result"] is None  # lists leave results out
    assert [r["id"] for r in succeeded["data"]] == [
        second.json()["run_id"],
        first.json()["run_id"],
    ]
    assert failed["data"] == []
    assert bad.status_code == 422


async def test_sse_stream_heartbeats_skips_seen_events_and_stops_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_views, "HEARTBEAT_SECONDS", 0.05)
    closed = asyncio.Event()

    async def events() -> AsyncIterator[RunEvent]:
        try:
            for seq, type in enumerate(["status", "progress", "result", "progress"]):
                if seq == 2:
                    await asyncio.sleep(0.12)  # idle: heartbeats
                yield RunEvent(run_id="r", seq=seq, type=type, data={"result": {"trace": {}}})
        finally:
            closed.set()

    chunks = [c async for c in sse_stream(events(), {"include_trace": False}, after=0)]
    assert chunks.count(": keep-alive\n\n") >= 1
    parsed = sse_events("".join(chunks))
    assert [(e["id"], e["event"]) for e in parsed] == [("1", "progress"), ("2", "result")]
    assert parsed[1]["data"]["data"]["result"]["trace"] is None  # presented per the options
    assert closed.is_set()  # the source is closed after the terminal event


# -- registries --------------------------------------------------------------------------------


async def test_strategies_and_verifiers_list_schemas_and_capabilities(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        strategies = (await svc.client.get("/v1/strategies")).json()
        verifiers = (await svc.client.get("/v1/verifiers")).json()
    by_name = {s["name"]: s for s in strategies["data"]}
    sc = by_name["self_consistency"]
    assert sc["kind"] == "strategy" and sc["description"]
    assert sc["config_schema"]["properties"]["n"]["type"] == "integer"
    assert sc["config_schema"]["additionalProperties"] is False
    assert sc["requires"] == [] and by_name["rpc"]["requires"] == ["logprobs"]
    configs = [s for s in strategies["data"] if s["kind"] == "config"]
    assert {"sc8", "best_of_sc"} <= {c["name"] for c in configs}  # configs/strategies/*.yaml
    assert all(c["spec"]["strategy"] in by_name for c in configs)
    assert by_name["weighted_sc"]["requires"] == ["logprobs"]  # its verifier's need
    vs = {v["name"]: v for v in verifiers["data"]}
    assert vs["mean_logprob"]["requires"] == ["logprobs"]
    assert vs["majority_vote"]["requires"] == []
    assert all(v["config_schema"].get("type") == "object" for v in vs.values())


# -- health and readiness ----------------------------------------------------------------------


async def test_healthz_and_readyz_with_in_process_backends(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        health = await svc.client.get("/healthz")
        ready = await svc.client.get("/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["service"] == "ready"
    assert body["backends"]["local"] == {"ready": True, "kind": "fake", "detail": "in-process"}
    assert body["store"]["ready"] is True


async def test_readyz_checks_an_openai_backend_and_a_closed_port(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with FakeOpenAIServer() as server:
        up = OpenAICompatBackend(name="up", model="m", base_url=server.base_url, server="generic")
        down = OpenAICompatBackend(
            name="down", model="m", base_url=f"http://127.0.0.1:{closed}/v1", server="generic"
        )
        async with serve(tmp_path / "a", up) as svc:
            ready = await svc.client.get("/readyz")
        async with serve(tmp_path / "b", FakeBackend(name="local"), down) as svc:
            unready = await svc.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["backends"]["up"]["ready"] is True
    assert unready.status_code == 503
    body = unready.json()
    assert body["status"] == "unavailable"
    assert body["backends"]["local"]["ready"] is True
    assert body["backends"]["down"]["ready"] is False
    assert "cannot reach the server" in body["backends"]["down"]["detail"]
    assert str(closed) not in unready.text and server.base_url not in ready.text  # no base URLs
    assert body["error"]["code"] == "not_ready" and "'down'" in body["error"]["message"]


class LazyEngine(VLLMEngineBackend):
    """An in-process engine that has not been started (it would start on first use)."""

    async def start(self) -> None:
        return None


async def test_readyz_is_503_while_an_engine_is_not_started(tmp_path: Path) -> None:
    engine = LazyEngine(name="engine", model=str(tmp_path / "no-model"))
    async with serve(tmp_path, FakeBackend(name="local"), engine) as svc:
        response = await svc.client.get("/readyz")
    assert response.status_code == 503
    detail = response.json()["backends"]["engine"]
    assert detail["ready"] is False and detail["kind"] == "vllm"
    assert "not started" in detail["detail"]


async def test_readyz_is_503_before_the_lifespan_ran(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), orchestrator=Orchestrator([FakeBackend()]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ready = await client.get("/readyz")
        health = await client.get("/healthz")
    assert ready.status_code == 503 and ready.json()["service"] == "not started"
    assert health.status_code == 200


# -- over real HTTP ----------------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[str]:
    """The service on uvicorn in a thread (a FakeBackend with 0.3 s latency); yields its URL."""
    orch = Orchestrator([FakeBackend(name="local", latency=0.3)])
    app = create_app(settings_for(tmp_path), orchestrator=orch)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def test_events_stream_while_the_run_is_in_flight(live_server: str) -> None:
    async with httpx.AsyncClient(base_url=live_server, timeout=10) as client:
        body = {"problem": "q", "strategy": {"strategy": "self_consistency", "n": 2}}
        run_id = (await client.post("/v1/runs", json=body)).json()["run_id"]
        status_during_stream = None
        types = []
        async with client.stream("GET", f"/v1/runs/{run_id}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    types.append(line.removeprefix("event: "))
                    if status_during_stream is None:
                        status_during_stream = (await client.get(f"/v1/runs/{run_id}")).json()
        assert status_during_stream is not None
        assert status_during_stream["status"] in ("queued", "running")  # arrived live
        assert types[0] == "status" and types[-1] == "result"
