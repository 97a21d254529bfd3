"""Tests for orchestrator.store.run_store (RunStore, RunRecord) and migration 2.

Every test that takes ``store_url`` runs on SQLite and on PostgreSQL (tests/unit/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, insert, inspect, select, text, update

from orchestrator.errors import StoreError
from orchestrator.store import RunRecord, RunStore, make_engine, migrate
from orchestrator.store import db as store_db
from orchestrator.store.db import Completion, Run
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Result, Score, ScoredCandidate, Usage

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
REASON = "the service restarted while this run was in flight"


class Clock:
    """A settable clock: ``clock()`` returns ``now``; ``tick()`` advances it by one second."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def runs(store_url: str, clock: Clock) -> AsyncIterator[RunStore]:
    store = RunStore(store_url, clock=clock)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def request(question: str = "What is 6*7?") -> dict[str, Any]:
    return {"problem": question, "strategy": {"strategy": "self_consistency", "n": 4}}


def big_result(spans: int = 1500, payload: int = 1500) -> dict[str, Any]:
    """A real Result with a trace of ``spans`` backend spans carrying ``payload`` chars each."""
    trace = Trace(problem_id="p", strategy="self_consistency")
    with trace.span("self_consistency", kind="strategy", n=spans) as root:
        for i in range(spans):
            with trace.span("generate", kind="backend", index=i) as span:
                span.set(text=f"step {i}: " + "∑ réponse 42 😀 " * (payload // 16), logprob=-0.5)
        root.set(votes={"42": spans})
    trace.finish()
    candidate = Candidate(text="The answer is \\boxed{42}", tokens=9, answer="42")
    scored = ScoredCandidate(candidate=candidate, scores=[Score(verifier="prm", value=0.9)])
    result = Result(
        answer="42",
        candidate=candidate,
        candidates=[scored],
        usage=Usage(prompt_tokens=10, completion_tokens=36, calls=4),
        trace=trace.to_dict(),
        strategy="self_consistency",
        details={"votes": {"42": 4}},
    )
    return result.model_dump(mode="json")


# -- lifecycle -------------------------------------------------------------------------------


async def test_create_mark_running_finish_get(runs: RunStore, clock: Clock) -> None:
    created = await runs.create("r1", request(), key_id="key_1")
    assert created == RunRecord(
        id="r1", status="queued", created_at=T0, request=request(), key_id="key_1"
    )
    assert await runs.get("r1") == created

    t1 = clock.tick()
    assert await runs.mark_running("r1") is True
    running = await runs.get("r1")
    assert running is not None and running.status == "running" and running.started_at == t1
    assert not running.finished and running.finished_at is None

    t2 = clock.tick()
    result = {"answer": "42", "details": {"votes": {"42": 3, "41": 1}}, "trace": {"spans": []}}
    usage = Usage(prompt_tokens=5, completion_tokens=7, calls=4).model_dump(mode="json")
    assert await runs.finish("r1", "succeeded", result=result, usage=usage) is True
    done = await runs.get("r1")
    assert done == created.model_copy(
        update={
            "status": "succeeded",
            "started_at": t1,
            "finished_at": t2,
            "result": result,
            "usage": usage,
        }
    )
    assert done.finished and done.created_at.tzinfo is not None
    assert done.created_at.utcoffset() == timedelta(0)


async def test_unknown_run(runs: RunStore) -> None:
    assert await runs.get("nope") is None
    assert await runs.mark_running("nope") is False
    assert await runs.finish("nope", "failed", error={"message": "x"}) is False


async def test_finished_runs_are_final(runs: RunStore) -> None:
    await runs.create("r", request())
    error = {"message": "cancelled by the client", "type": "cancelled", "code": None}
    assert await runs.finish("r", "cancelled", error=error) is True  # queued -> cancelled
    assert await runs.mark_running("r") is False
    assert await runs.finish("r", "succeeded", result={"answer": "42"}) is False
    record = await runs.get("r")
    assert record is not None
    assert (record.status, record.error, record.result) == ("cancelled", error, None)
    assert record.started_at is None

    await runs.create("s", request())
    assert await runs.mark_running("s") is True
    assert await runs.mark_running("s") is False  # only a queued run starts


async def test_invalid_arguments(runs: RunStore) -> None:
    await runs.create("r", request())
    with pytest.raises(ValueError, match="exists already"):
        await runs.create("r", request("another"))
    for status in ("running", "queued", "done"):
        with pytest.raises(ValueError, match="succeeded, failed, cancelled"):
            await runs.finish("r", status)
    with pytest.raises(ValueError, match="invalid run status 'done'"):
        await runs.list(status="done")
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="invalid limit"):
            await runs.list(limit=limit)
    assert (await runs.get("r")) is not None


async def test_list_newest_first_with_limit_and_status(runs: RunStore, clock: Clock) -> None:
    for i in range(6):
        await runs.create(f"r{i}", request(f"q{i}"))
        if i % 2 == 0:
            clock.tick()  # r1/r2 and r3/r4 share a creation time: insertion order breaks ties
    await runs.finish("r1", "succeeded", result={"answer": "1"})
    await runs.finish("r4", "succeeded", result={"answer": "4"})
    await runs.mark_running("r5")

    assert [r.id for r in await runs.list()] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in await runs.list(limit=2)] == ["r5", "r4"]
    assert [r.id for r in await runs.list(status="succeeded")] == ["r4", "r1"]
    assert [r.id for r in await runs.list(status="running")] == ["r5"]
    assert await runs.list(status="failed") == []
    full = {r.id: r for r in await runs.list()}
    assert full["r4"].result == {"answer": "4"}
    light = await runs.list(status="succeeded", include_result=False)
    assert [(r.result, r.status, r.request) for r in light] == [
        (None, "succeeded", request("q4")),
        (None, "succeeded", request("q1")),
    ]


async def test_list_by_key(runs: RunStore) -> None:
    for run_id, key_id in [("a", "key_a"), ("b", "key_b"), ("n", None), ("a2", "key_a")]:
        await runs.create(run_id, request(), key_id=key_id)

    async def ids(key_ids: set[str | None]) -> list[str]:
        return [r.id for r in await runs.list(key_ids=key_ids)]

    assert await ids({"key_a", None}) == ["a2", "n", "a"]
    assert await ids({"key_b"}) == ["b"]
    assert await ids({None}) == ["n"]
    assert await ids(set()) == []
    assert [r.id for r in await runs.list(key_ids={"key_a"}, limit=1)] == ["a2"]


# -- restart ---------------------------------------------------------------------------------


async def test_restart_keeps_finished_runs_and_fails_interrupted_ones(
    store_url: str, clock: Clock
) -> None:
    first = RunStore(store_url, clock=clock)
    outcomes = {"ok": "succeeded", "bad": "failed", "gone": "cancelled"}
    for run_id, status in outcomes.items():
        await first.create(run_id, request(run_id))
        await first.mark_running(run_id)
        await first.finish(run_id, status, result={"answer": run_id}, error={"message": run_id})
    await first.create("running", request())
    await first.mark_running("running")
    await first.create("queued", request())
    before = {r.id: r for r in await first.list()}
    # the process dies here: the first store is never closed cleanly

    restart = clock.tick(60)
    second = RunStore(store_url, clock=clock)
    try:
        await second.open()
        assert await second.fail_interrupted(REASON) == 2
        after = {r.id: r for r in await second.list()}
        assert set(after) == set(before)
        for run_id in outcomes:
            assert after[run_id] == before[run_id]  # finished runs: exactly as they were
        interrupted = {"message": REASON, "type": "interrupted", "code": None}
        for run_id in ("running", "queued"):
            run = after[run_id]
            assert (run.status, run.error, run.finished_at) == ("failed", interrupted, restart)
            assert run.request == before[run_id].request
        assert after["running"].started_at == before["running"].started_at
        assert await second.fail_interrupted(REASON) == 0
        assert await first.finish("running", "succeeded") is False  # a late writer: ignored
        assert (await second.get("running")) == after["running"]
    finally:
        await first.aclose()
        await second.aclose()


# -- payloads --------------------------------------------------------------------------------


async def test_large_result_with_trace_round_trips(runs: RunStore) -> None:
    result = big_result()
    size = len(json.dumps(result))
    assert size > 3_000_000
    await runs.create("big", request())
    assert await runs.finish("big", "succeeded", result=result, usage=result["usage"]) is True
    got = await runs.get("big")
    assert got is not None and got.result == result and got.usage == result["usage"]
    assert Result.model_validate(got.result).trace == result["trace"]
    (listed,) = await runs.list(limit=1)
    assert listed.result == result


async def test_json_payloads_round_trip_exactly(runs: RunStore) -> None:
    odd = {
        "unicode": "naïve ∑ 😀 中文",
        "controls": "nul\x00 tab\t newline\n",
        "lone_surrogate": "\ud800",
        "numbers": [0, -1, 2**62, 1.5, -0.0, 1e-300],
        "nested": {"a": [None, True, False, {"b": []}]},
        "quotes": "'\"\\",
    }
    await runs.create("odd", odd, key_id=None)
    await runs.finish("odd", "failed", error={"message": "x" * 10, "type": "t", "code": None})
    got = await runs.get("odd")
    assert got is not None and got.request == odd and got.key_id is None
    assert got.error == {"message": "x" * 10, "type": "t", "code": None}
    assert got.usage is None and got.result is None


async def test_unreadable_row_is_a_store_error(runs: RunStore, store_url: str) -> None:
    await runs.create("r", request())
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == "r").values(result="{not json"))
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="unreadable"):
        await runs.get("r")


async def test_unreachable_database_is_a_store_error_with_masked_password() -> None:
    store = RunStore("postgresql://postgres:s3cret@127.0.0.1:1/test", retry_backoff=0)
    with pytest.raises(StoreError) as info:
        await store.create("r", request())
    assert "postgres:***@127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)
    await store.aclose()


# -- concurrency -----------------------------------------------------------------------------


async def test_concurrent_stores_and_coroutines(store_url: str) -> None:
    stores = [RunStore(store_url), RunStore(store_url)]

    async def lifecycle(store: RunStore, run_id: str) -> None:
        await store.create(run_id, request(run_id))
        assert await store.mark_running(run_id)
        assert await store.finish(run_id, "succeeded", result={"answer": run_id})
        await store.list(limit=5)

    try:
        await asyncio.gather(*(lifecycle(stores[i % 2], f"run-{i}") for i in range(80)))
        listed = await stores[0].list(limit=1000)
    finally:
        for store in stores:
            await store.aclose()
    assert sorted(r.id for r in listed) == sorted(f"run-{i}" for i in range(80))
    for record in listed:
        assert record.status == "succeeded" and record.result == {"answer": record.id}
        assert record.request == request(record.id)


WRITER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from orchestrator.store import RunStore

    url, writer, go = sys.argv[1:4]

    async def main():
        store = RunStore(url)
        await store.open()
        open(f"{go}.{writer}", "w").close()  # ready: imports done, schema migrated
        while not os.path.exists(go):
            time.sleep(0.005)

        async def one(i):
            run_id = f"{writer}-{i}"
            await store.create(run_id, {"writer": writer, "i": i, "pad": "x" * 2000})
            await store.mark_running(run_id)
            await store.finish(run_id, "succeeded", result={"answer": run_id}, usage={"calls": i})

        await asyncio.gather(*(one(i) for i in range(60)))
        await store.aclose()

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_two_writer_processes(store_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, name, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("A", "B")
    }
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{name}").exists() for name in procs):
        assert time.monotonic() < deadline, "writer processes did not start"
        assert all(p.poll() is None for p in procs.values()), "a writer process died"
        time.sleep(0.01)
    go.touch()
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"writer {name} failed:\n{err}"

    async def check() -> None:
        async with RunStore(store_url) as store:
            records = await store.list(limit=1000)
        assert len(records) == 120
        for record in records:
            writer, i = record.id.split("-")
            assert record.status == "succeeded" and record.result == {"answer": record.id}
            assert record.request == {"writer": writer, "i": int(i), "pad": "x" * 2000}
            assert record.usage == {"calls": int(i)}

    asyncio.run(check())


# -- migration 2 -----------------------------------------------------------------------------


def test_migration_2_upgrades_a_version_1_store(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(store_url)
    try:
        with monkeypatch.context() as patch:  # a store written by the previous ttc
            patch.setattr(store_db, "MIGRATIONS", store_db.MIGRATIONS[:1])
            patch.setattr(store_db, "LATEST_VERSION", 1)
            assert migrate(engine) == 1
        with engine.begin() as conn:
            assert not inspect(conn).has_table("runs")
            conn.execute(
                insert(Completion).values(key="k", sample_index=0, model="m", candidate="{}")
            )
        assert migrate(engine) == store_db.LATEST_VERSION
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert {"completions", "runs", "api_keys", "api_key_usage"} <= tables
            assert conn.scalar(select(func.count()).select_from(Completion)) == 1
            latest = conn.scalar(select(func.max(store_db.SchemaVersion.version)))
            assert latest == store_db.LATEST_VERSION
    finally:
        engine.dispose()


def test_migration_3_adds_scopes_and_reservations_to_a_version_2_store(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(store_url)
    try:
        with monkeypatch.context() as patch:  # a store written by the previous ttc
            patch.setattr(store_db, "MIGRATIONS", store_db.MIGRATIONS[:2])
            patch.setattr(store_db, "LATEST_VERSION", 2)
            assert migrate(engine) == 2
        with engine.begin() as conn:  # as version 2 declared them
            conn.execute(text("ALTER TABLE api_keys DROP COLUMN scopes"))
            conn.execute(text("ALTER TABLE api_key_usage DROP COLUMN reserved"))
            conn.execute(text("INSERT INTO api_key_usage (key_id, day, tokens) "
                              "VALUES ('k', '2025-01-01', 7)"))  # fmt: skip
        assert migrate(engine) == 3
        assert migrate(engine) == 3  # idempotent
        with engine.connect() as conn:
            assert "token_reservations" in inspect(conn).get_table_names()
            assert "scopes" in {c["name"] for c in inspect(conn).get_columns("api_keys")}
            rows = conn.execute(text("SELECT key_id, tokens, reserved FROM api_key_usage")).all()
            assert [tuple(r) for r in rows] == [("k", 7, 0)]
    finally:
        engine.dispose()
