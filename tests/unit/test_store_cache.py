"""Tests for orchestrator.store: URLs, engines, migrations and the CompletionCache.

Every store test runs twice, on SQLite and on PostgreSQL: the ``store_url`` fixture of
tests/unit/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select, text

from orchestrator.backends.base import GenerationRequest
from orchestrator.errors import StoreError
from orchestrator.store import (
    CachedSample,
    CompletionCache,
    cache_key,
    default_url,
    make_engine,
    migrate,
    normalize_url,
)
from orchestrator.store import db as store_db
from orchestrator.store.db import LATEST_VERSION, MIGRATIONS, Completion, SchemaVersion
from orchestrator.types import Candidate, Message, TokenLogprob


@pytest_asyncio.fixture
async def cache(store_url: str) -> AsyncIterator[CompletionCache]:
    store = CompletionCache(store_url)
    try:
        yield store
    finally:
        await store.aclose()


def request_for(prompt: str | None = None, **kw: object) -> GenerationRequest:
    """A chat request with a unique question unless ``prompt`` is given."""
    question = prompt or f"What is 6*7? {uuid.uuid4()}"
    return GenerationRequest(messages=[Message(role="user", content=question)], **kw)


def sample(text_: str, *, tokens: int = 3, error: str | None = None) -> CachedSample:
    return CachedSample(Candidate(text=text_, tokens=tokens, error=error), prompt_tokens=11)


# -- URLs and engines ------------------------------------------------------------------------


def test_normalize_url_maps_paths_and_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("/var/lib/ttc.db") == "sqlite:////var/lib/ttc.db"
    assert normalize_url(Path("rel/ttc.db")) == f"sqlite:///{tmp_path / 'rel' / 'ttc.db'}"
    assert normalize_url("~/x.db") == f"sqlite:///{Path.home() / 'x.db'}"
    assert normalize_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert normalize_url("postgres://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("postgresql://u@h/db?sslmode=require") == (
        "postgresql+psycopg://u@h/db?sslmode=require"
    )
    assert normalize_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_default_url_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTC_STORE_URL", raising=False)
    monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))
    assert default_url() == f"sqlite:///{tmp_path / 'cache' / 'ttc.db'}"
    monkeypatch.delenv("TTC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_url() == f"sqlite:///{tmp_path / 'xdg' / 'ttc' / 'ttc.db'}"
    monkeypatch.setenv("TTC_STORE_URL", "postgres://u@h/db")
    assert default_url() == "postgresql+psycopg://u@h/db"
    assert CompletionCache().url == "postgresql+psycopg://u@h/db"


def test_make_engine_sqlite_creates_dirs_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ttc.db"
    engine = make_engine(path)
    try:
        assert path.parent.is_dir()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        engine.dispose()


async def test_unreachable_postgres_names_the_url_and_masks_the_password() -> None:
    store = CompletionCache("postgresql://postgres:s3cret@127.0.0.1:1/test", retry_backoff=0)
    with pytest.raises(StoreError) as info:
        await store.get_many("k", [0])
    message = str(info.value)
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/test" in message
    assert "s3cret" not in message
    assert "Fix:" in message and "TTC_STORE_URL" in message
    assert not info.value.retryable
    await store.aclose()


def test_invalid_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="invalid store URL"):
        make_engine("nosuchdialect://x/y")


# -- keys ------------------------------------------------------------------------------------


def test_cache_key_is_stable_and_ignores_n_and_seed() -> None:
    base = request_for("q", temperature=0.5, max_tokens=64, stop=["\n\n", "END"])
    key = cache_key("m", base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache_key("m", base) == key
    assert cache_key("m", base.model_copy(update={"n": 16, "seed": 123})) == key
    reordered = request_for("q", temperature=0.5, max_tokens=64, stop=["END", "\n\n", "END"])
    assert cache_key("m", reordered) == key  # stop strings are a set


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.6},
        {"max_tokens": 65},
        {"top_p": 0.9},
        {"stop": ["END"]},
        {"logprobs": True},
        {"messages": [Message(role="user", content="q2")]},
        {"messages": [Message(role="system", content="q")]},
        {"messages": None, "prompt": "q"},
    ],
)
def test_cache_key_changes_with_sampling_parameters(change: dict[str, object]) -> None:
    base = request_for("q", temperature=0.5, max_tokens=64, stop=["\n\n", "END"])
    changed = GenerationRequest.model_validate({**base.model_dump(), **change})
    assert cache_key("m", changed) != cache_key("m", base)


def test_cache_key_changes_with_model_and_top_logprobs_and_continuation() -> None:
    base = request_for("q", logprobs=True)
    assert cache_key("m2", base) != cache_key("m", base)
    assert cache_key("m", base.model_copy(update={"top_logprobs": 5})) != cache_key("m", base)
    partial = [Message(role="user", content="q"), Message(role="assistant", content="Step 1")]
    plain = GenerationRequest(messages=partial)
    continued = GenerationRequest(messages=partial, continue_final=True)
    assert cache_key("m", plain) != cache_key("m", continued)


# -- the cache -------------------------------------------------------------------------------


async def test_round_trip_keeps_everything_and_marks_cached(
    cache: CompletionCache, store_url: str
) -> None:
    original = Candidate(
        text="6*7 = 42. The answer is \\boxed{42}",
        tokens=4,
        logprobs=[
            TokenLogprob(token="6", logprob=-0.01, top={"6": -0.01, "Six": -4.5}),
            TokenLogprob(token="*", logprob=-0.2, top={"*": -0.2, "x": float("-inf")}),
            TokenLogprob(token="7", logprob=-1e-6),
        ],
        finish_reason="length",
        answer="42",
        model="m",
        backend="b",
        cached=True,  # stored as False whatever it says
    )
    key = cache_key("m", request_for(logprobs=True, top_logprobs=2))
    await cache.put_many(key, "m", {3: CachedSample(original, prompt_tokens=17)})

    got = await cache.get_many(key, [3])
    assert got == {3: CachedSample(original.model_copy(update={"cached": True}), 17)}
    assert got[3].candidate.logprobs is not None and got[3].candidate.mean_logprob() is not None

    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            model, raw = conn.execute(
                select(Completion.model, Completion.candidate).where(Completion.key == key)
            ).one()
    finally:
        engine.dispose()
    assert model == "m" and json.loads(raw)["cached"] is False


async def test_missing_indices_are_absent(cache: CompletionCache) -> None:
    key = cache_key("m", request_for())
    await cache.put_many(key, "m", {0: sample("a"), 2: sample("c")})
    got = await cache.get_many(key, [3, 2, 1, 0, 2])
    assert sorted(got) == [0, 2] and got[2].candidate.text == "c"
    assert await cache.get_many(key, []) == {}
    assert await cache.get_many(cache_key("m", request_for()), range(5)) == {}


async def test_first_writer_wins_without_error(cache: CompletionCache, store_url: str) -> None:
    key = cache_key("m", request_for())
    await cache.put_many(key, "m", {0: sample("first")})
    await cache.put_many(key, "m", {0: sample("second"), 1: sample("second")})
    got = await cache.get_many(key, [0, 1])
    assert got[0].candidate.text == "first" and got[1].candidate.text == "second"

    other = CompletionCache(store_url)  # a second engine writing the same rows concurrently
    try:
        writes = [
            store.put_many(key, "m", {i: sample(f"w{w}") for i in range(2, 40)})
            for w, store in enumerate([cache, other, cache, other])
        ]
        await asyncio.gather(*writes)
        got = await other.get_many(key, range(40))
    finally:
        await other.aclose()
    assert sorted(got) == list(range(40))
    assert (await cache.stats())["entries"] == 40


async def test_failed_candidates_are_not_stored(cache: CompletionCache) -> None:
    key = cache_key("m", request_for())
    await cache.put_many(key, "m", {0: sample("", error="boom"), 1: sample("ok")})
    await cache.put_many(key, "m", {2: sample("", error="boom")})
    assert sorted(await cache.get_many(key, [0, 1, 2])) == [1]
    await cache.put_many(key, "m", {0: sample("later")})  # a failure does not block a success
    assert (await cache.get_many(key, [0]))[0].candidate.text == "later"


async def test_stats_and_clear(cache: CompletionCache) -> None:
    assert await cache.stats() == {"entries": 0, "keys": 0}
    key1, key2 = cache_key("m", request_for()), cache_key("m", request_for())
    await cache.put_many(key1, "m", {0: sample("a"), 1: sample("b")})
    await cache.put_many(key2, "m", {0: sample("c")})
    assert await cache.stats() == {"entries": 3, "keys": 2}
    assert await cache.clear() == 3
    assert await cache.stats() == {"entries": 0, "keys": 0}
    assert await cache.get_many(key1, [0, 1]) == {}


async def test_many_concurrent_coroutines(cache: CompletionCache) -> None:
    keys = [cache_key("m", request_for()) for _ in range(5)]

    async def worker(w: int) -> None:
        for k, key in enumerate(keys):
            await cache.put_many(key, "m", {i: sample(f"{w}") for i in range(w % 3, 12, 2)})
            await cache.get_many(key, range(12))
            if k == 2:
                await cache.stats()

    await asyncio.gather(*(worker(w) for w in range(40)))
    for key in keys:
        assert sorted(await cache.get_many(key, range(12))) == list(range(12))
    assert await cache.stats() == {"entries": 60, "keys": 5}


async def test_aclose_then_reuse(cache: CompletionCache) -> None:
    key = cache_key("m", request_for())
    async with CompletionCache(cache.url) as other:
        await other.put_many(key, "m", {0: sample("a")})
    await cache.aclose()
    await cache.aclose()
    assert (await cache.get_many(key, [0]))[0].candidate.text == "a"


def test_migrate_is_idempotent_and_records_the_version(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        assert migrate(engine) == LATEST_VERSION
        assert migrate(engine) == LATEST_VERSION
        with engine.connect() as conn:
            rows = conn.execute(
                select(SchemaVersion.version, SchemaVersion.description).order_by(
                    SchemaVersion.version
                )
            ).all()
            assert [tuple(r) for r in rows] == [(m.version, m.description) for m in MIGRATIONS]
            assert rows[0] == (1, "completion cache")
            assert conn.execute(text("SELECT COUNT(*) FROM completions")).scalar() == 0
    finally:
        engine.dispose()


def test_migrate_refuses_a_newer_schema(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO schema_version VALUES (999, 'future', CURRENT_TIMESTAMP)")
            )
        with pytest.raises(StoreError, match="newer than this ttc"):
            migrate(engine)
    finally:
        engine.dispose()


# -- SQLite locking --------------------------------------------------------------------------


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


async def _write_while_locked(path: Path, seconds: float, retries: int, backoff: float) -> None:
    store = CompletionCache(path, lock_retries=retries, retry_backoff=backoff)
    await store.open()
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, seconds, locked))
    holder.start()
    locked.wait()
    try:
        await store.put_many("k" * 64, "m", {0: sample("a")})
    finally:
        holder.join()
        await store.aclose()


async def test_sqlite_lock_is_retried_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "SQLITE_BUSY_TIMEOUT_MS", 20)
    await _write_while_locked(tmp_path / "t.db", 0.3, retries=8, backoff=0.05)
    async with CompletionCache(tmp_path / "t.db") as store:
        assert await store.stats() == {"entries": 1, "keys": 1}


async def test_sqlite_lock_gives_up_with_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "SQLITE_BUSY_TIMEOUT_MS", 20)
    with pytest.raises(StoreError, match=r"database is locked.*gave up after 3 attempts") as info:
        await _write_while_locked(tmp_path / "t.db", 1.0, retries=2, backoff=0.01)
    assert info.value.retryable and str(tmp_path) in str(info.value)


# -- several processes -----------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import asyncio, json, os, random, sys, time
    from orchestrator.backends.base import GenerationRequest
    from orchestrator.store import CachedSample, CompletionCache, cache_key
    from orchestrator.types import Candidate

    url, writer, run_id, go = sys.argv[1:5]
    keys = [cache_key("m", GenerationRequest(prompt=f"{run_id} {k}")) for k in range(10)]
    jobs = [(k, i) for k in range(10) for i in range(30)]
    random.Random(writer).shuffle(jobs)
    seen, conflicts = {}, []

    async def worker(part):
        rng = random.Random(f"{writer}{part[:1]}")
        while part:
            size = rng.randint(1, 6)
            batch, part = part[:size], part[size:]
            by_key = {}
            for k, i in batch:
                by_key.setdefault(k, {})[i] = CachedSample(
                    Candidate(text=f"{writer}:{k}:{i}", tokens=i), prompt_tokens=k
                )
            for k, samples in by_key.items():
                await cache.put_many(keys[k], "m", samples)
                got = await cache.get_many(keys[k], [*samples, rng.randrange(30)])
                missing = set(samples) - set(got)
                if missing:
                    conflicts.append(f"written but not read back: {k}:{sorted(missing)}")
                for i, s in got.items():
                    text = seen.setdefault(f"{k}:{i}", s.candidate.text)
                    if text != s.candidate.text:
                        conflicts.append(f"{k}:{i} changed from {text} to {s.candidate.text}")

    async def main():
        global cache
        cache = CompletionCache(url)
        open(f"{go}.{writer}", "w").close()  # ready: imports done
        while not os.path.exists(go):
            time.sleep(0.005)
        await asyncio.gather(*(worker(jobs[w::4]) for w in range(4)))
        await cache.aclose()
        print(json.dumps({"seen": seen, "conflicts": conflicts}))

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_two_writer_processes(store_url: str, tmp_path: Path) -> None:
    run_id, go = uuid.uuid4().hex, tmp_path / "go"
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, name, run_id, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("A", "B")
    }
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{name}").exists() for name in procs):  # both imported
        assert time.monotonic() < deadline, "writer processes did not start"
        time.sleep(0.01)
    go.touch()
    outputs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"writer {name} failed:\n{err}"
        outputs[name] = json.loads(out)
        assert outputs[name]["conflicts"] == [], outputs[name]["conflicts"][:5]

    keys = [cache_key("m", GenerationRequest(prompt=f"{run_id} {k}")) for k in range(10)]
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Completion.key, Completion.sample_index, Completion.candidate).where(
                    Completion.key.in_(keys)
                )
            ).all()
    finally:
        engine.dispose()
    final = {(key, index): json.loads(raw)["text"] for key, index, raw in rows}
    assert len(rows) == len(final) == 300
    for k, key in enumerate(keys):
        for i in range(30):
            assert final[key, i] in (f"A:{k}:{i}", f"B:{k}:{i}")
    for name, output in outputs.items():  # what each writer read is what stayed
        for ki, seen_text in output["seen"].items():
            k, i = map(int, ki.split(":"))
            assert final[keys[k], i] == seen_text, f"writer {name} read {ki}={seen_text}"
