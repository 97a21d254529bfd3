"""The OpenAI-compatible API, driven by the official ``openai`` client (and raw HTTP where the
wire format itself is under test), against the real app on a FakeBackend, in process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from orchestrator.api.runs import DISCONNECTED, RunManager
from orchestrator.store.run_store import RunRecord
from orchestrator.testing.fake_backend import FakeBackend
from tests.api.conftest import MakeApp

QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]


@pytest.fixture
async def oai(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client on the app."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    client = openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="x", http_client=http, max_retries=0
    )
    async with client:
        yield client


async def stored(app: FastAPI, run_id: str) -> RunRecord:
    record = await app.state.run_store.get(run_id)
    assert record is not None
    return record


def trace_usage(record: RunRecord) -> tuple[int, int]:
    """(prompt, completion) tokens summed over the backend spans of the stored trace."""

    def walk(span: dict[str, Any]) -> list[dict[str, Any]]:
        return [span] + [s for c in span.get("children", []) for s in walk(c)]

    assert record.result is not None
    spans = [s for s in walk(record.result["trace"]) if s["kind"] == "backend"]
    assert spans
    return sum(s["prompt_tokens"] for s in spans), sum(s["completion_tokens"] for s in spans)


async def test_chat_completion_with_the_openai_client(
    app: FastAPI, oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    resp = await oai.chat.completions.create(
        model="self_consistency:local",
        messages=[{"role": "system", "content": "Be terse."}, *QUESTION],
        n=2,
        extra_body={"ttc": {"n": 4}},
    )
    assert resp.object == "chat.completion"
    assert resp.model == "self_consistency:local"
    assert [c.index for c in resp.choices] == [0, 1]
    for choice in resp.choices:
        assert choice.message.role == "assistant"
        assert "\\boxed{" in (choice.message.content or "")
        assert choice.finish_reason == "stop"
    ttc = resp.model_extra["ttc"]
    assert ttc["strategy"] == "self_consistency"
    assert ttc["spec"] == {"strategy": "self_consistency", "n": 4}
    assert len(ttc["run_ids"]) == 2 and resp.id == f"chatcmpl-{ttc['run_ids'][0]}"
    assert sum(ttc["votes"].values()) == 4 and 0 < ttc["confidence"] <= 1
    assert ttc["budget_exhausted"] is False and len(ttc["runs"]) == 2
    assert all(run["usage"]["calls"] >= 1 for run in ttc["runs"])

    prompt = completion = 0
    for i, run_id in enumerate(ttc["run_ids"]):
        record = await stored(app, run_id)
        assert record.status == "succeeded"
        assert len(record.result["candidates"]) == 4
        assert record.result["candidate"]["text"] == resp.choices[i].message.content
        p, c = trace_usage(record)
        assert (p, c) == (record.usage["prompt_tokens"], record.usage["completion_tokens"])
        prompt, completion = prompt + p, completion + c
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt, completion)
    assert resp.usage.total_tokens == prompt + completion
    # the system prompt reached the backend with the question
    assert backend.requests and all(
        [m.role for m in r.messages or []] == ["system", "user"] for r in backend.requests
    )
    assert backend.requests[0].messages[0].content == "Be terse."


async def test_sampling_fields_reach_the_strategy_spec_and_backend(
    app: FastAPI, oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    resp = await oai.chat.completions.create(
        model="self_consistency:local",
        messages=QUESTION,
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop=["END"],
        seed=7,
        extra_body={"ttc": {"n": 2}, "logit_bias": {"1": 2}, "some_vendor_field": True},
    )
    run_id = resp.model_extra["ttc"]["run_ids"][0]
    spec = (await stored(app, run_id)).request["strategy"]
    assert spec == {
        "strategy": "self_consistency",
        "n": 2,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["END"],
    }
    req = backend.requests[-1]
    assert (req.temperature, req.top_p, req.max_tokens, req.stop) == (0.2, 0.9, 50, ["END"])
    assert (await stored(app, run_id)).request["seed"] == 7


async def test_ttc_config_wins_and_strategy_override(app: FastAPI, oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(
        model="local",  # a plain backend: the strategy comes from ttc
        messages=QUESTION,
        temperature=0.1,
        extra_body={
            "ttc": {"strategy": "sc8", "temperature": 0.5, "config": {"n": 3}},
            "max_completion_tokens": 40,
        },
    )
    ttc = resp.model_extra["ttc"]
    spec = (await stored(app, ttc["run_ids"][0])).request["strategy"]
    assert spec["strategy"] == "self_consistency"  # sc8 is a named config of it
    assert (spec["n"], spec["temperature"], spec["max_tokens"]) == (3, 0.5, 40)


async def test_multi_turn_messages_become_one_question(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    await oai.chat.completions.create(
        model="single:local",
        messages=[
            {"role": "developer", "content": "Think."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
        ],
    )
    messages = backend.requests[-1].messages or []
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[0].content == "Think."
    assert messages[1].content == "User: What is 2+2?\n\nAssistant: 4\n\nUser: And 3+3?"


async def test_streaming_with_the_openai_client(app: FastAPI, oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="self_consistency:local",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ttc": {"n": 4, "progress": "chunks"}},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    progress = [c.model_extra["ttc_progress"] for c in chunks if c.model_extra.get("ttc_progress")]
    assert any(p.get("kind") == "backend" for p in progress)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    ttc = last.model_extra["ttc"]
    record = await stored(app, ttc["run_ids"][0])
    assert content == record.result["candidate"]["text"]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == trace_usage(record)


async def test_stream_wire_format_has_progress_comments(client: httpx.AsyncClient) -> None:
    body = {"model": "self_consistency:local", "messages": QUESTION, "stream": True, "n": 2}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in resp.text.split("\n\n") if b]
    comments = [json.loads(b.removeprefix(": progress ")) for b in blocks if b.startswith(": ")]
    assert {c["choice"] for c in comments} == {0, 1}
    assert {c["type"] for c in comments} == {"status", "progress"}
    assert blocks[-1] == "data: [DONE]"
    data = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1] if b.startswith("data: ")]
    assert "usage" not in data[-1] and data[-1]["choices"][0]["finish_reason"] == "stop"
    assert data[-1]["ttc"]["run_ids"] and len(data[-1]["ttc"]["runs"]) == 2


async def test_models(oai: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in oai.models.list()]
    assert ids[0] == "local"
    assert {"self_consistency:local", "best_of_n:local", "sc8:local"} <= set(ids)
    model = await oai.models.retrieve("self_consistency:local")
    assert (model.id, model.owned_by) == ("self_consistency:local", "ttc")
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no_such_strategy:local")


async def test_unknown_strategy_is_400_listing_the_available_ones(
    oai: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model="nope:local", messages=QUESTION)
    err = info.value.body
    assert isinstance(err, dict)
    assert err["type"] == "invalid_request_error" and err["param"] == "model"
    assert "nope" in err["message"]
    assert "self_consistency" in err["message"] and "best_of_n" in err["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "single:local", "messages": QUESTION, "temperature": 5}, 422, "temperature"),
        ({"model": "single:local"}, 422, "messages"),
        ({"model": "single:local", "messages": [{"role": "x", "content": "?"}]}, 422, None),
        ({"model": "single:local", "messages": QUESTION, "n": 99}, 400, "n"),
        ({"model": "single:local", "messages": QUESTION, "ttc": {"nn": 4}}, 400, "ttc.nn"),
        ({"model": "local", "messages": QUESTION, "ttc": {"config": {"zz": 1}}}, 400, None),
        ({"model": "whatever", "messages": QUESTION}, 400, "model"),
        (
            {"model": "local", "messages": QUESTION, "ttc": {"answer_format": "zz"}},
            422,
            "ttc.answer_format",
        ),
        (
            {"model": "single:local", "messages": [{"role": "assistant", "content": "hi"}]},
            400,
            None,
        ),
        (
            {"model": "single:local", "messages": QUESTION, "ttc": {"budget": {"max_calls": 0}}},
            422,
            None,
        ),
    ],
)
async def test_bad_requests_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
        assert param.split(".")[-1] in err["message"]


async def test_invalid_json_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_backend_failure_is_503_without_internals(
    oai: openai.AsyncOpenAI, backend: FakeBackend, app: FastAPI, stream: bool
) -> None:
    backend.fail_rate = 1.0
    with pytest.raises(openai.APIError) as info:
        resp = await oai.chat.completions.create(
            model="self_consistency:local",
            messages=QUESTION,
            stream=stream,
        )
        if stream:
            async for _ in resp:
                pass
    err = info.value.body
    assert isinstance(err, dict)
    assert (err["type"], err["code"]) == ("backend_error", "backend_unavailable")
    assert "[local]" in err["message"] and "error id" in err["message"]
    assert "injected failure" not in err["message"] and "Traceback" not in err["message"]
    if not stream:
        assert isinstance(info.value, openai.InternalServerError)
        assert info.value.status_code == 503
    failed = await app.state.run_store.list(status="failed")
    assert len(failed) == 1 and failed[0].error["code"] == "backend_unavailable"


async def test_backend_timeout_is_504(make_app: MakeApp) -> None:
    class Slow(FakeBackend):
        async def generate(self, request: Any) -> Any:
            from orchestrator.errors import BackendTimeout

            raise BackendTimeout("timed out after 3 retries", backend=self.name)

    async with make_app(Slow(name="local")) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"model": "single:local", "messages": QUESTION}
            resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "backend_timeout"


async def test_internal_errors_are_500_without_details(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(RunManager, "run_many", boom)
    resp = await client.post("/v1/chat/completions", json={"model": "local", "messages": QUESTION})
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["type"] == "internal_error" and "error id" in err["message"]
    assert "secret" not in resp.text and "Traceback" not in resp.text


async def test_unknown_route_is_404_with_the_error_body(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/nothing")
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "unknown route GET /v1/nothing"
    resp = await client.delete("/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


async def test_model_override_for_the_default_backend(
    oai: openai.AsyncOpenAI, make_app: MakeApp
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:  # not granted: 403
        await oai.chat.completions.create(model="single:other-model", messages=QUESTION)
    assert info.value.body["param"] == "model" and "allow: [model]" in info.value.message
    async with make_app(allow=["model"]) as app:
        transport = httpx.ASGITransport(app=app)
        http = httpx.AsyncClient(transport=transport, base_url="http://test")
        async with openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="x", http_client=http, max_retries=0
        ) as granted:
            resp = await granted.chat.completions.create(
                model="single:other-model", messages=QUESTION
            )
        record = await stored(app, resp.model_extra["ttc"]["run_ids"][0])
    assert record.request["model"] == "other-model" and record.request["backend"] is None
    assert record.result["candidate"]["model"] == "other-model"


# -- client disconnects -------------------------------------------------------------------------


def http_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


async def call_until_disconnect(
    app: FastAPI, body: dict[str, Any], disconnect: asyncio.Event
) -> list[dict[str, Any]]:
    """Drive the ASGI app by hand: send ``body``, then report a disconnect once ``disconnect``
    is set (httpx's ASGITransport cannot disconnect mid-response)."""
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(http_scope("/v1/chat/completions"), receive, send), 10)
    return sent


async def until_running(app: FastAPI) -> RunRecord:
    for _ in range(500):
        running = await app.state.run_store.list(status="running")
        if running:
            return running[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no run started")


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_run(
    app: FastAPI, backend: FakeBackend, stream: bool
) -> None:
    backend.latency = 30.0
    disconnect = asyncio.Event()
    body = {"model": "self_consistency:local", "messages": QUESTION, "stream": stream}
    call = asyncio.ensure_future(call_until_disconnect(app, body, disconnect))
    run = await until_running(app)
    disconnect.set()
    sent = await call
    record = await app.state.runs.wait(run.id, timeout=5)
    assert record.status == "cancelled"
    assert record.error["message"] == DISCONNECTED
    assert (await stored(app, run.id)).status == "cancelled"
    assert backend.calls == 1  # the one call in flight, cancelled with the run
    if stream:  # the stream had started: first chunk and progress comments were sent
        bodies = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert run.id.encode() in bodies and b"[DONE]" not in bodies
