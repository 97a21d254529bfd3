"""RunManager (submit, wait, get, cancel, events, shutdown) on FakeBackends and a SQLite
RunStore, the app lifespan around it, and the trace listener it relies on."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi import FastAPI

from orchestrator.api.errors import APIError
from orchestrator.api.prometheus import ServiceMetrics
from orchestrator.api.protocol import ReasonRequest
from orchestrator.api.runs import DISCONNECTED, FINAL_SEQ, SHUTDOWN, RunEvent, RunManager
from orchestrator.api.settings import ServiceSettings
from orchestrator.backends.base import Backend, Capabilities
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError, RegistryError
from orchestrator.runner import Orchestrator
from orchestrator.store.run_store import RunRecord, RunStore
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.trace import Span, Trace
from orchestrator.types import Result
from tests.api.conftest import MakeApp

SC3 = {"strategy": "self_consistency", "n": 3}
MakeManager = Callable[..., RunManager]


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[RunStore]:
    s = RunStore(store_url)
    await s.open()
    yield s
    await s.aclose()


@pytest.fixture
async def make_manager(store: RunStore) -> AsyncIterator[MakeManager]:
    """``make_manager(*backends, metrics=None, key_store=None, **settings)``; every manager is
    shut down (no grace) at teardown."""
    made: list[RunManager] = []

    def make(*backends: Backend, metrics: Any = None, key_store: Any = None, **settings: Any):
        orch = Orchestrator(list(backends) or [FakeBackend(name="local")])
        settings.setdefault("auth", "off")
        mgr = RunManager(orch, store, metrics, ServiceSettings(**settings), key_store=key_store)
        made.append(mgr)
        return mgr

    yield make
    for mgr in made:
        await mgr.shutdown(0)


def req(**fields: Any) -> ReasonRequest:
    return ReasonRequest(**{"problem": "What is 6 times 7?", "strategy": SC3, **fields})


async def until_status(mgr: RunManager, run_id: str, status: str) -> RunRecord:
    for _ in range(500):
        record = await mgr.get(run_id)
        if record is not None and record.status == status:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} never reached {status}")


async def collect(events: AsyncIterator[RunEvent]) -> list[RunEvent]:
    return [e async for e in events]


def backend_tokens(record: RunRecord) -> tuple[int, int]:
    def walk(span: dict[str, Any]) -> list[dict[str, Any]]:
        return [span] + [s for c in span.get("children", []) for s in walk(c)]

    assert record.result is not None
    spans = [s for s in walk(record.result["trace"]) if s["kind"] == "backend"]
    return sum(s["prompt_tokens"] for s in spans), sum(s["completion_tokens"] for s in spans)


async def test_submit_wait_get(make_manager: MakeManager, store: RunStore) -> None:
    mgr = make_manager(FakeBackend(name="local", latency=0.05), default_budget={"max_calls": 5})
    run_id = await mgr.submit(req(seed=3), key_id="key-1")
    live = await mgr.get(run_id)
    assert live is not None and live.status in ("queued", "running") and live.key_id == "key-1"
    final = await mgr.wait(run_id)
    assert final.status == "succeeded" and final.error is None
    assert final.started_at is not None and final.finished_at is not None
    assert final.result is not None and final.result["run_id"] == run_id
    assert final.result["answer"] in {"42", "41", "7"} and len(final.result["candidates"]) == 3
    assert backend_tokens(final) == (final.usage["prompt_tokens"], final.usage["completion_tokens"])
    saved = await store.get(run_id)
    assert saved is not None and saved.status == "succeeded"
    assert (saved.result, saved.usage, saved.key_id) == (final.result, final.usage, "key-1")
    # the stored request is the effective one: resolved spec and the default budget
    assert saved.request["strategy"] == SC3 and saved.request["seed"] == 3
    assert saved.request["budget"]["max_calls"] == 5
    assert await mgr.get(run_id) == final  # finished: from memory, same record


async def test_named_configs_and_the_default_strategy(make_manager: MakeManager) -> None:
    mgr = make_manager(default_strategy="sc8")
    named = await mgr.wait(await mgr.submit(req(strategy={"strategy": "sc8", "n": 2})))
    default = await mgr.wait(await mgr.submit(req(strategy=None)))
    spec = named.request["strategy"]
    assert (spec["strategy"], spec["n"], spec["max_tokens"]) == ("self_consistency", 2, 256)
    assert default.request["strategy"]["strategy"] == "self_consistency"
    assert len(default.result["candidates"]) == 8


async def test_wait_with_a_timeout_returns_the_current_record(make_manager: MakeManager) -> None:
    mgr = make_manager(FakeBackend(name="local", latency=30))
    run_id = await mgr.submit(req())
    record = await mgr.wait(run_id, timeout=0.05)
    assert record.status in ("queued", "running") and record.finished_at is None


async def test_events_replay_then_follow(make_manager: MakeManager, store: RunStore) -> None:
    mgr = make_manager(FakeBackend(name="local", latency=0.2))
    run_id = await mgr.submit(req())
    early = asyncio.ensure_future(collect(mgr.events(run_id)))
    await until_status(mgr, run_id, "running")
    late = await collect(mgr.events(run_id))  # subscribed mid-run: replays, then follows
    events = await early
    assert late == events
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["status", "status"]
    assert [e.data["status"] for e in events[:2]] == ["queued", "running"]
    progress = [e.data for e in events if e.type == "progress"]
    backend = [p for p in progress if p["kind"] == "backend"]
    assert len(backend) == 1 and backend[0]["completion_tokens"] > 0
    assert progress[-1]["kind"] == "strategy" and progress[-1]["span"] == "self_consistency"
    assert progress[-1]["usage"]["calls"] == 1
    final = events[-1]
    assert final.type == "result" and final.data["status"] == "succeeded"
    assert final.data["result"]["answer"] == (await mgr.get(run_id)).result["answer"]
    # finished: its final event only, same seq; from another manager (store only): FINAL_SEQ
    assert await collect(mgr.events(run_id)) == [final]
    other = make_manager()
    [stored] = await collect(other.events(run_id))
    assert (stored.type, stored.seq, stored.data["id"]) == ("result", FINAL_SEQ, run_id)


async def test_unknown_runs(make_manager: MakeManager) -> None:
    mgr = make_manager()
    assert await mgr.get("nope") is None
    assert await mgr.cancel("nope") is None
    with pytest.raises(APIError) as info:
        await mgr.wait("nope")
    assert info.value.status == 404
    with pytest.raises(APIError):
        await collect(mgr.events("nope"))


async def test_cancel_a_running_run(make_manager: MakeManager, store: RunStore) -> None:
    backend = FakeBackend(name="local", latency=30)
    mgr = make_manager(backend)
    run_id = await mgr.submit(req())
    while backend.calls == 0:  # cancel while the backend call is in flight
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    record = await mgr.cancel(run_id)
    assert time.monotonic() - t0 < 2
    assert record is not None and record.status == "cancelled" and record.result is None
    assert record.error == {
        "message": "cancelled by the client",
        "type": "cancelled",
        "code": "cancelled",
    }
    assert record.usage is not None and record.usage["calls"] == 0
    assert (await store.get(run_id)).status == "cancelled"
    assert await mgr.cancel(run_id) == record  # idempotent
    assert [e.type for e in await collect(mgr.events(run_id))] == ["error"]
    assert backend.calls == 1


async def test_cancelling_the_caller_of_run_cancels_the_run(
    make_manager: MakeManager, store: RunStore
) -> None:
    mgr = make_manager(FakeBackend(name="local", latency=30))
    task = asyncio.ensure_future(mgr.run(req()))
    for _ in range(500):
        running = await store.list(status="running")
        if running:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await mgr.wait(running[0].id)
    assert record.status == "cancelled" and record.error["message"] == DISCONNECTED


async def test_bad_requests_raise_before_anything_is_stored(
    make_manager: MakeManager, store: RunStore
) -> None:
    backend = FakeBackend(name="local", capabilities=Capabilities())
    mgr = make_manager(backend)
    with pytest.raises(RegistryError, match="self_consistency"):
        await mgr.submit(req(strategy="no_such_strategy"))
    with pytest.raises(ConfigError, match="n"):
        await mgr.submit(req(strategy={"strategy": "self_consistency", "n": 0}))
    with pytest.raises(ConfigError, match="unknown backend 'gpu'"):
        await mgr.submit(req(backend="gpu"))
    with pytest.raises(CapabilityError, match="logprobs"):
        await mgr.submit(req(strategy="rpc"))
    assert await store.list() == [] and backend.calls == 0


async def test_model_override(make_manager: MakeManager) -> None:
    class Engine(FakeBackend):
        kind = "vllm"

    mgr = make_manager(FakeBackend(name="local"), Engine(name="engine"))
    record = await mgr.wait(await mgr.submit(req(strategy="single", model="other-model")))
    assert record.result["candidate"]["model"] == "other-model"
    assert mgr.orch.backends["local"].model == "fake-model"  # the shared backend is untouched
    with pytest.raises(ConfigError, match="serves only its model"):
        await mgr.submit(req(backend="engine", model="other-model"))


async def test_backend_failure_fails_the_run_with_its_trace(make_manager: MakeManager) -> None:
    mgr = make_manager(FakeBackend(name="local", fail_rate=1.0))
    record = await mgr.wait(await mgr.submit(req()))
    assert record.status == "failed"
    assert record.error is not None and record.error["type"] == "backend_error"
    assert record.error["code"] == "backend_unavailable"
    assert record.error["message"].startswith("no answer: every sample failed: [local]")
    assert "error id" in record.error["message"]
    assert "injected failure" not in record.error["message"]  # upstream text stays in the log
    assert record.result is not None and record.result["trace"] is not None


async def test_internal_errors_are_logged_not_stored(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    mgr = make_manager()
    monkeypatch.setattr(Orchestrator, "run", boom)
    with caplog.at_level(logging.ERROR, logger="orchestrator.api.runs"):
        record = await mgr.wait(await mgr.submit(req()))
    assert record.status == "failed"
    error = record.error or {}
    assert (error["type"], error["code"]) == ("internal_error", "internal_error")
    error_id = re.fullmatch(r"internal error \(error id (\w+)\); .*", error["message"])
    assert error_id is not None and "secret" not in error["message"]
    assert record.id in caplog.text and "secret internals" in caplog.text
    assert error_id.group(1) in caplog.text  # the log holds the details under the id


async def test_a_result_that_is_not_json_fails_the_run_cleanly(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def odd(*args: Any, **kwargs: Any) -> Result:
        return Result(answer="42", trace={"attrs": {"x": object()}})

    mgr = make_manager()
    monkeypatch.setattr(Orchestrator, "run", odd)
    record = await asyncio.wait_for(mgr.wait(await mgr.submit(req())), 5)
    assert record.status == "failed" and record.error["type"] == "internal_error"
    assert record.result is None


async def test_logprobs_are_stored_only_when_asked(make_manager: MakeManager) -> None:
    mgr = make_manager()
    spec = {"strategy": "self_consistency", "n": 2, "verifier": "mean_logprob"}
    plain = await mgr.wait(await mgr.submit(req(strategy=spec)))
    kept = await mgr.wait(await mgr.submit(req(strategy=spec, options={"include_logprobs": True})))
    assert all(sc["candidate"]["logprobs"] is None for sc in plain.result["candidates"])
    assert all(sc["candidate"]["logprobs"] for sc in kept.result["candidates"])


async def test_concurrency_limit_keeps_runs_queued(make_manager: MakeManager) -> None:
    mgr = make_manager(FakeBackend(name="local", latency=0.3), max_concurrent_runs=1)
    first, second = await mgr.submit(req()), await mgr.submit(req())
    await until_status(mgr, first, "running")
    assert (await mgr.get(second)).status == "queued"
    assert (await mgr.wait(second)).status == "succeeded"


async def test_metrics_and_key_tokens(make_manager: MakeManager) -> None:
    class Keys:
        def __init__(self) -> None:
            self.added: list[tuple[str, int]] = []

        async def settle(self, key_id: str, run_id: str, tokens: int) -> None:
            self.added.append((key_id, tokens))

    keys, metrics = Keys(), ServiceMetrics()
    mgr = make_manager(metrics=metrics, key_store=keys)
    record = await mgr.wait(await mgr.submit(req(), key_id="k1"))
    await mgr.wait(await mgr.submit(req()))  # no key: nothing charged
    total = record.usage["prompt_tokens"] + record.usage["completion_tokens"]
    assert keys.added == [("k1", total)]
    labels = {"strategy": "self_consistency", "status": "succeeded"}
    assert metrics.registry.get_sample_value("ttc_runs_total", labels) == 2


async def test_shutdown_grace_then_cancel(make_manager: MakeManager, store: RunStore) -> None:
    fast, slow = FakeBackend(name="fast", latency=0.05), FakeBackend(name="slow", latency=30)
    mgr = make_manager(fast, slow)
    quick, stuck = await mgr.submit(req(backend="fast")), await mgr.submit(req(backend="slow"))
    t0 = time.monotonic()
    await mgr.shutdown(grace=0.5)
    assert 0.4 < time.monotonic() - t0 < 3
    assert mgr.closing
    assert (await store.get(quick)).status == "succeeded"
    cancelled = await store.get(stuck)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.error["message"] == SHUTDOWN
    with pytest.raises(APIError) as info:
        await mgr.submit(req())
    assert info.value.status == 503


async def test_lifespan_shutdown_and_restart(make_app: MakeApp, store_url: str) -> None:
    async with make_app(FakeBackend(name="local", latency=30), shutdown_grace_seconds=0.1) as app:
        runs: RunManager = app.state.runs
        run_id = await runs.submit(req())
        await until_status(runs, run_id, "running")
    probe = RunStore(store_url)
    await probe.open()
    record = await probe.get(run_id)
    assert record is not None and record.status == "cancelled"
    assert record.error["message"] == SHUTDOWN
    # a run a crashed process left behind is reported failed when the service starts
    await probe.create("orphan", {"problem": "q"})
    await probe.mark_running("orphan")
    async with make_app() as app:
        orphan = await app.state.runs.get("orphan")
        assert (await app.state.runs.get(run_id)).status == "cancelled"  # finished survive
    await probe.aclose()
    assert orphan.status == "failed" and orphan.error["type"] == "interrupted"
    assert "restarted" in orphan.error["message"]


async def test_a_bad_default_strategy_stops_the_start(make_app: MakeApp) -> None:
    with pytest.raises(RegistryError, match="nope"):
        async with make_app(default_strategy="nope"):
            pass
    with pytest.raises(CapabilityError, match="logprobs"):
        async with make_app(
            FakeBackend(name="local", capabilities=Capabilities()), default_strategy="rpc"
        ):
            pass


async def test_app_state(app: FastAPI) -> None:
    state = app.state
    assert isinstance(state.runs, RunManager) and isinstance(state.metrics, ServiceMetrics)
    assert isinstance(state.orch, Orchestrator) and list(state.orch.backends) == ["local"]
    assert isinstance(state.run_store, RunStore) and state.settings.max_request_n == 16


# -- the trace listener (orchestrator.trace / Orchestrator.run) -----------------------------------


def test_trace_listener_sees_every_span_as_it_closes() -> None:
    closed: list[tuple[str, bool, str | None]] = []
    trace = Trace(listener=lambda s: closed.append((s.name, s.end is not None, s.error)))
    with trace.span("outer"):
        with trace.span("inner", kind="backend"):
            pass
        with pytest.raises(ValueError), trace.span("bad"):
            raise ValueError("x")
    assert closed == [("inner", True, None), ("bad", True, "ValueError: x"), ("outer", True, None)]


def test_a_failing_listener_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(span: Span) -> None:
        raise RuntimeError("listener bug")

    trace = Trace(listener=broken, strategy="s")
    with trace.span("a") as span:
        span.set(k=1)
    assert trace.root.children[0].end is not None and "listener bug" in caplog.text
    assert trace.to_dict()["attrs"] == {"strategy": "s"}  # attrs still work as before


async def test_orchestrator_run_passes_the_listener() -> None:
    spans: list[Span] = []
    orch = Orchestrator([FakeBackend(name="local")])
    result = await orch.run("q", SC3, Budget(max_calls=3), trace_listener=spans.append)
    backend = [s for s in spans if s.kind == "backend"]
    assert backend and sum(s.completion_tokens for s in backend) == result.usage.completion_tokens
    assert spans[-1].kind == "strategy" and spans[-1].name == "self_consistency"
    assert (await orch.run("q", SC3)).answer is not None  # still optional
