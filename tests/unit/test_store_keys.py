"""Tests for orchestrator.store.keys (KeyStore, ApiKey, daily token usage).

Every test that takes ``store_url`` runs on SQLite and on PostgreSQL (tests/unit/conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import pytest_asyncio
from sqlalchemy import select

from orchestrator.errors import ConfigError
from orchestrator.store import ApiKey, KeyStore, make_engine
from orchestrator.store.db import ApiKeyRow, ApiKeyUsage, table
from orchestrator.store.run_store import RunStore

T0 = datetime(2025, 3, 1, 23, 59, 0, tzinfo=UTC)  # one minute before a UTC day ends


class Clock:
    """A settable clock: ``clock()`` returns ``now``."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def keys(store_url: str, clock: Clock) -> AsyncIterator[KeyStore]:
    store = KeyStore(store_url, clock=clock)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def raw_rows(url: str, name: str) -> list[tuple[object, ...]]:
    """Every row of a table, read behind the store's back."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(select(table(name)))]
    finally:
        engine.dispose()


# -- create and verify -----------------------------------------------------------------------


async def test_create_returns_the_plaintext_once_and_stores_only_its_hash(
    keys: KeyStore, store_url: str
) -> None:
    key, plaintext = await keys.create(" ci ", rpm_limit=60, daily_token_limit=100_000)
    assert re.fullmatch(r"ttc-[A-Za-z0-9_-]{43}", plaintext)
    assert re.fullmatch(r"key_[0-9a-f]{16}", key.id)
    assert key == ApiKey(
        id=key.id,
        name="ci",
        prefix=plaintext[:12],
        created_at=T0,
        rpm_limit=60,
        daily_token_limit=100_000,
    )
    assert key.active and "hash" not in key.model_dump()

    rows = raw_rows(store_url, "api_keys")
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0])
    assert plaintext not in stored and plaintext[12:] not in stored  # no secret beyond prefix
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    assert digest in rows[0]
    assert await keys.list() == [key]


async def test_verify_ok_unknown_and_revoked(keys: KeyStore, clock: Clock) -> None:
    key, plaintext = await keys.create("ci")
    other, other_plaintext = await keys.create("laptop")
    assert await keys.verify(plaintext) == key
    assert await keys.verify(other_plaintext) == other
    for wrong in ("", "ttc-", plaintext[:-1], plaintext + "x", plaintext.upper(), "x" * 10_000):
        assert await keys.verify(wrong) is None

    clock.now = T0 + timedelta(minutes=5)
    assert await keys.revoke(key.id) is True
    assert await keys.verify(plaintext) is None
    assert await keys.verify(other_plaintext) == other
    (revoked,) = [k for k in await keys.list() if k.id == key.id]
    assert revoked.revoked_at == T0 + timedelta(minutes=5) and not revoked.active


async def test_plaintexts_are_unique(keys: KeyStore) -> None:
    created = [await keys.create(f"k{i}") for i in range(20)]
    assert len({plaintext for _, plaintext in created}) == 20
    assert len({key.id for key, _ in created}) == 20


async def test_invalid_create_arguments(keys: KeyStore) -> None:
    for name in ("", "   ", "x" * 201):
        with pytest.raises(ConfigError, match="invalid key name"):
            await keys.create(name)
    with pytest.raises(ConfigError, match="invalid rpm_limit 0"):
        await keys.create("a", rpm_limit=0)
    with pytest.raises(ConfigError, match="invalid daily_token_limit -5"):
        await keys.create("a", daily_token_limit=-5)
    assert await keys.list() == []


# -- revoke, list, any_active ----------------------------------------------------------------


async def test_revoke_by_id_or_name(keys: KeyStore) -> None:
    first, _ = await keys.create("ci")
    second, _ = await keys.create("laptop")
    assert await keys.revoke("laptop") is True
    assert await keys.revoke("laptop") is False  # no active key of that name any more
    assert await keys.revoke(second.id) is False  # already revoked
    assert await keys.revoke("nope") is False
    assert [k.id for k in await keys.list(include_revoked=False)] == [first.id]
    assert [k.id for k in await keys.list()] == [first.id, second.id]
    assert await keys.revoke(f"  {first.id} ") is True
    assert await keys.list(include_revoked=False) == []


async def test_active_names_are_unique_and_revoked_names_reusable(keys: KeyStore) -> None:
    old, old_plaintext = await keys.create("ci")
    with pytest.raises(ConfigError, match="active API key named 'ci' exists already"):
        await keys.create("ci")
    await keys.revoke("ci")
    new, new_plaintext = await keys.create("ci")
    assert new.id != old.id
    assert await keys.verify(new_plaintext) == new and await keys.verify(old_plaintext) is None
    assert await keys.revoke("ci") is True  # the active one
    assert all(not k.active for k in await keys.list())


async def test_revoke_prefers_an_id_over_a_name(keys: KeyStore) -> None:
    target, _ = await keys.create("target")
    decoy, decoy_plaintext = await keys.create(target.id)  # a key named like another's id
    assert await keys.revoke(target.id) is True
    assert await keys.verify(decoy_plaintext) == decoy
    assert await keys.revoke(target.id) is False  # that id is revoked: names are not tried
    assert await keys.verify(decoy_plaintext) == decoy


async def test_any_active(keys: KeyStore) -> None:
    assert await keys.any_active() is False
    await keys.create("a")
    await keys.create("b")
    assert await keys.any_active() is True
    await keys.revoke("a")
    assert await keys.any_active() is True
    await keys.revoke("b")
    assert await keys.any_active() is False
    assert len(await keys.list()) == 2


# -- tokens per UTC day ----------------------------------------------------------------------


async def test_tokens_are_counted_per_utc_day(keys: KeyStore, clock: Clock) -> None:
    key, _ = await keys.create("ci", daily_token_limit=1000)
    other, _ = await keys.create("other")
    assert await keys.tokens_today(key.id) == 0
    assert await keys.add_tokens(key.id, 300) == 300
    assert await keys.add_tokens(key.id, 200) == 500
    assert await keys.add_tokens(key.id, 0) == 500
    assert await keys.add_tokens(other.id, 7) == 7
    assert await keys.tokens_today(key.id) == 500

    # 00:30 in UTC+02:00 is still 22:30 UTC on 1 March: the same UTC day
    clock.now = datetime(2025, 3, 2, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert await keys.tokens_today(key.id) == 500

    clock.now = T0 + timedelta(minutes=1)  # midnight UTC: a new day
    assert await keys.tokens_today(key.id) == 0
    assert await keys.add_tokens(key.id, 40) == 40
    assert await keys.tokens_today(other.id) == 0

    clock.now = T0  # the previous day's counter is kept
    assert await keys.tokens_today(key.id) == 500
    assert await keys.tokens_today("key_unknown") == 0


async def test_negative_tokens_are_refused(keys: KeyStore) -> None:
    key, _ = await keys.create("ci")
    with pytest.raises(ValueError, match="invalid token count -1"):
        await keys.add_tokens(key.id, -1)
    assert await keys.tokens_today(key.id) == 0


async def test_concurrent_token_increments_are_never_lost(store_url: str, clock: Clock) -> None:
    stores = [KeyStore(store_url, clock=clock) for _ in range(3)]
    try:
        key, _ = await stores[0].create("ci")
        await asyncio.gather(*(stores[i % 3].add_tokens(key.id, i + 1) for i in range(90)))
        assert await stores[1].tokens_today(key.id) == sum(range(1, 91))
    finally:
        for store in stores:
            await store.aclose()
    usage = raw_rows(store_url, ApiKeyUsage.__tablename__)
    assert usage == [(key.id, T0.date(), sum(range(1, 91)), 0)]  # tokens, nothing reserved


ADDER = textwrap.dedent(
    """
    import asyncio, sys
    from orchestrator.store import KeyStore

    url, key_id = sys.argv[1:3]

    async def main():
        async with KeyStore(url) as keys:
            for _ in range(25):
                await asyncio.gather(*(keys.add_tokens(key_id, 1) for _ in range(4)))

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_two_processes_adding_tokens(store_url: str) -> None:
    async with KeyStore(store_url) as keys:
        key, _ = await keys.create("ci")
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", ADDER, store_url, key.id],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in procs:
            _, err = await asyncio.to_thread(proc.communicate, timeout=180)
            assert proc.returncode == 0, err
        assert await keys.tokens_today(key.id) == 200


async def test_key_rows_never_hold_the_plaintext_after_many_operations(
    keys: KeyStore, store_url: str
) -> None:
    created = [await keys.create(f"k{i}", rpm_limit=i + 1) for i in range(5)]
    for key, plaintext in created:
        assert await keys.verify(plaintext) == key
        await keys.add_tokens(key.id, 10)
    await keys.revoke("k0")
    dump = repr(raw_rows(store_url, "api_keys")) + repr(raw_rows(store_url, "api_key_usage"))
    for _, plaintext in created:
        assert plaintext not in dump and plaintext[12:] not in dump
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            hashes = conn.scalars(select(ApiKeyRow.key_hash)).all()
    finally:
        engine.dispose()
    assert sorted(hashes) == sorted(hashlib.sha256(p.encode()).hexdigest() for _, p in created)


# -- scopes and daily token reservations ------------------------------------------------------


async def test_scopes_are_stored_and_listed(keys: KeyStore) -> None:
    key, plaintext = await keys.create("granted", scopes=["network", "network", "client_code"])
    plain, _ = await keys.create("plain")
    assert key.scopes == ["network", "client_code"]
    verified = await keys.verify(plaintext)
    assert verified is not None and verified.scopes == ["network", "client_code"]
    assert {k.name: k.scopes for k in await keys.list()} == {
        "granted": ["network", "client_code"],
        "plain": [],
    }
    assert plain.scopes == []


async def test_reserve_grants_what_is_left_and_settle_charges_what_was_spent(
    keys: KeyStore, clock: Clock
) -> None:
    key, _ = await keys.create("k", daily_token_limit=100)
    assert await keys.reserve(key.id, "r1", 60, 100) == 60
    assert await keys.reserve(key.id, "r2", 60, 100) == 40  # only what is left
    assert await keys.reserve(key.id, "r3", 60, 100) == 0  # nothing: nothing recorded
    assert (await keys.reserved_today(key.id), await keys.tokens_today(key.id)) == (100, 0)
    await keys.settle(key.id, "r1", 25)
    assert (await keys.reserved_today(key.id), await keys.tokens_today(key.id)) == (40, 25)
    assert await keys.reserve(key.id, "r4", 60, 100) == 35
    await keys.settle(key.id, "r2", 0)
    await keys.settle(key.id, "r4", 50)  # spent more than reserved: charged all the same
    await keys.settle(key.id, "nope", 5)  # no reservation: just charged
    assert (await keys.reserved_today(key.id), await keys.tokens_today(key.id)) == (0, 80)
    with pytest.raises(ValueError):
        await keys.reserve(key.id, "r5", 0, 100)


async def test_release_stale_ends_reservations_of_runs_no_longer_in_flight(
    keys: KeyStore, store_url: str
) -> None:
    key, _ = await keys.create("k", daily_token_limit=100)
    async with RunStore(store_url) as runs:
        await runs.create("live", {}, key_id=key.id)
        await runs.create("done", {}, key_id=key.id)
        await runs.finish("done", "failed")
    for run_id in ("live", "done", "gone"):
        assert await keys.reserve(key.id, run_id, 10, 100) == 10
    assert await keys.release_stale() == 2  # "done" and "gone" (never stored)
    assert await keys.reserved_today(key.id) == 10


async def test_concurrent_reservations_of_two_replicas_never_exceed_the_limit(
    store_url: str, clock: Clock
) -> None:
    """Two KeyStores (two engines, as two service replicas) reserve concurrently."""
    async with KeyStore(store_url, clock=clock) as one, KeyStore(store_url, clock=clock) as two:
        key, _ = await one.create("shared", daily_token_limit=1000)
        grants = await asyncio.gather(
            *((one if i % 2 else two).reserve(key.id, f"run-{i}", 70, 1000) for i in range(40))
        )
        held = await one.reserved_today(key.id)
    assert sum(grants) == held == 1000  # 14 full grants, one partial, the rest nothing
    assert sorted(g for g in grants if g) == [20] + [70] * 14
