"""End-to-end tests of orchestrator.sdk against the real service app.

The async client talks to the app in process through ``httpx.ASGITransport`` with the app's
lifespan entered; the sync client talks to a real uvicorn server on a free loopback port (its
private loop thread cannot share the test loop's app state). Backends are FakeBackends; the
store is SQLite in tmp_path.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from orchestrator import AsyncClient, Client, Orchestrator
from orchestrator.api import create_app
from orchestrator.api.auth import auth_state
from orchestrator.api.settings import ServiceSettings
from orchestrator.budget import Budget
from orchestrator.sdk import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    RunEvent,
    ServerError,
)
from orchestrator.testing import FakeBackend
from orchestrator.types import Problem, Result

SC4 = {"strategy": "self_consistency", "n": 4, "max_tokens": 64}


def settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    overrides.setdefault("auth", "off")
    return ServiceSettings(store_url=f"sqlite:///{tmp_path / 'ttc.db'}", **overrides)


@asynccontextmanager
async def running_app(
    tmp_path: Path, *backends: FakeBackend, auth: str = "off"
) -> AsyncIterator[FastAPI]:
    """The app over ``backends`` (default: one FakeBackend "local"), lifespan entered."""
    orch = Orchestrator(list(backends) or [FakeBackend(name="local", answers=["42"])])
    app = create_app(settings(tmp_path, auth=auth), orchestrator=orch)
    async with app.router.lifespan_context(app):
        yield app


def sdk(app: FastAPI, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("max_retries", 0)
    return AsyncClient("http://test", transport=httpx.ASGITransport(app=app), **kwargs)


async def test_reason_returns_the_full_typed_result(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app, sdk(app) as ttc:
        run = await ttc.reason(
            Problem(question="What is 6*7?", system_prompt="Answer briefly."),
            SC4,
            Budget(max_completion_tokens=10_000),
            seed=1,
        )
        assert isinstance(run.result, Result)
        assert run.status == "succeeded" and run.answer == "42"
        assert run.result.strategy == "self_consistency" and len(run.result.candidates) == 4
        assert run.usage.calls >= 1 and run.usage.completion_tokens > 0
        assert run.result.trace is not None
        lean = await ttc.reason("What is 6*7?", "self_consistency", include_trace=False)
        assert lean.result.trace is None and lean.answer == "42"
        info = await ttc.get_run(run.run_id)
        assert info.status == "succeeded" and info.answer == "42" and info.done
        assert info.request is not None and info.request["seed"] == 1
        assert run.run_id in [r.id for r in await ttc.list_runs(limit=10)]


async def test_errors_from_the_real_app(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app, sdk(app) as ttc:
        with pytest.raises(BadRequestError) as info:
            await ttc.reason("q", "no_such_strategy")
        assert info.value.status == 400 and "self_consistency" in info.value.message
        with pytest.raises(BadRequestError) as info:
            await ttc.reason("q", SC4, {"max_calls": 0})
        assert info.value.status == 422 and info.value.param == "budget.max_calls"
        with pytest.raises(BadRequestError) as info:
            await ttc.reason("q", SC4, backend="nowhere")
        assert info.value.status == 400 and "local" in info.value.message
        with pytest.raises(NotFoundError) as nf:
            await ttc.get_run("ghost")
        assert nf.value.code == "not_found" and "ghost" in nf.value.message
        with pytest.raises(NotFoundError):
            await ttc.cancel("ghost")
        with pytest.raises(NotFoundError):
            await ttc.wait("ghost", timeout=5)


async def test_backend_failures_are_server_errors(tmp_path: Path) -> None:
    broken = FakeBackend(name="local", fail_rate=1.0)
    async with running_app(tmp_path, broken) as app, sdk(app) as ttc:
        with pytest.raises(ServerError) as info:
            await ttc.reason("q", SC4)
        assert info.value.status in (502, 503, 504) and info.value.type == "backend_error"


async def test_background_run_events_and_wait(tmp_path: Path) -> None:
    slow = FakeBackend(name="local", answers=["42"], latency=0.05)
    async with running_app(tmp_path, slow) as app, sdk(app) as ttc:
        run_id = await ttc.create_run("What is 6*7?", SC4)
        events: list[RunEvent] = [e async for e in ttc.events(run_id)]
        types = [e.type for e in events]
        assert types[0] == "status" and types[-1] == "result" and "progress" in types
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert all(e.run_id == run_id for e in events)
        info = await ttc.wait(run_id, timeout=10)
        assert info.status == "succeeded" and info.answer == "42"
        polled = await ttc.wait(await ttc.create_run("q", SC4), timeout=10, poll=0.01, stream=False)
        assert polled.status == "succeeded"


async def test_cancel_a_running_run(tmp_path: Path) -> None:
    slow = FakeBackend(name="local", latency=30.0)
    async with running_app(tmp_path, slow) as app, sdk(app) as ttc:
        run_id = await ttc.create_run("q", SC4)
        waiter = asyncio.ensure_future(ttc.wait(run_id, timeout=20))
        await asyncio.sleep(0.2)
        cancelled = await ttc.cancel(run_id)
        info = await waiter
        assert cancelled.status == info.status == "cancelled"
        assert info.error is not None and info.error.message
        assert (await ttc.cancel(run_id)).status == "cancelled"  # idempotent


async def test_catalogue_and_health(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app, sdk(app) as ttc:
        strategies = {s.name: s for s in await ttc.strategies()}
        sc = strategies["self_consistency"]
        assert sc.kind == "strategy" and "n" in sc.config_schema["properties"]
        assert isinstance(sc.requires, list)
        verifiers = {v.name: v for v in await ttc.verifiers()}
        assert verifiers and all(isinstance(v.config_schema, dict) for v in verifiers.values())
        assert await ttc.health() == {"status": "ok"}
        ready = await ttc.ready()
        assert ready["status"] == "ready" and "local" in ready["backends"]


async def test_auth_and_rate_limits(tmp_path: Path) -> None:
    async with running_app(tmp_path, auth="required") as app:
        _, secret = await app.state.key_store.create("sdk", rpm_limit=2)
        auth_state(app.state).invalidate()
        async with sdk(app) as anonymous:
            assert (await anonymous.health())["status"] == "ok"  # health needs no key
            with pytest.raises(AuthenticationError) as info:
                await anonymous.strategies()
            assert info.value.status == 401
        async with sdk(app, api_key="ttc-wrong") as wrong:
            with pytest.raises(AuthenticationError):
                await wrong.get_run("x")
        async with sdk(app, api_key=secret) as ttc:
            assert (await ttc.reason("q", SC4)).answer == "42"
            await ttc.strategies()
            with pytest.raises(RateLimitError) as limited:
                await ttc.strategies()
            assert limited.value.retry_after is not None and limited.value.retry_after > 0


# --- the sync client against a real uvicorn server ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """A uvicorn server on a free loopback port, in a thread, with one slow FakeBackend."""
    orch = Orchestrator([FakeBackend(name="local", answers=["42"], latency=0.02)])
    port = free_port()
    app = create_app(settings(tmp_path, port=port), orchestrator=orch)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(20)


def test_sync_client_against_a_real_server(server_url: str) -> None:
    with Client(server_url, timeout=30, max_retries=0) as ttc:
        assert ttc.health() == {"status": "ok"}
        run = ttc.reason("What is 6*7?", SC4)
        assert run.answer == "42" and run.usage.calls >= 1
        run_id = ttc.create_run("What is 6*7?", SC4)
        types = [e.type for e in ttc.events(run_id)]
        assert types[0] == "status" and types[-1] == "result"
        assert ttc.wait(run_id, timeout=20).status == "succeeded"
        assert ttc.get_run(run_id).answer == "42"
        with pytest.raises(BadRequestError):
            ttc.reason("q", "no_such_strategy")
