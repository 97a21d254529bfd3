"""Two service replicas sharing one PostgreSQL store: a key's daily token limit holds for two
clients sending runs to both at once (the reservation is one locked transaction of the store).

Needs PostgreSQL (``$TTC_TEST_POSTGRES_URL``, see tests/unit/conftest.py): skipped when it is
unreachable, a failure under ``CI`` or ``TTC_REQUIRE_POSTGRES``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack

import httpx
import psycopg
import pytest

from orchestrator.api import create_app
from orchestrator.api.settings import ServiceSettings
from orchestrator.runner import Orchestrator
from orchestrator.store.keys import KeyStore
from orchestrator.testing.fake_backend import FakeBackend
from tests.unit.conftest import POSTGRES_URL, _require_postgres

LIMIT = 400


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A private schema of the test server, dropped afterwards."""
    _require_postgres()
    schema = f"ttc_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def replica(stack: AsyncExitStack, url: str) -> httpx.AsyncClient:
    settings = ServiceSettings(store_url=url, shutdown_grace_seconds=1.0, max_runs_per_key=64)
    orch = Orchestrator([FakeBackend(name="local", latency=0.05, answers=["42"])])
    app = create_app(settings, orchestrator=orch)
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    return await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url="http://replica")
    )


async def test_daily_tokens_hold_across_two_replicas(pg_url: str) -> None:
    async with KeyStore(pg_url) as keys:
        key, secret = await keys.create("shared", daily_token_limit=LIMIT)
    headers = {"Authorization": f"Bearer {secret}"}
    body = {
        "problem": "What is 6 * 7?",
        "strategy": {"strategy": "self_consistency", "n": 4},
        "budget": {"max_completion_tokens": 64, "max_prompt_tokens": 40},  # 104 reserved a run
    }
    async with AsyncExitStack() as stack:
        one, two = await replica(stack, pg_url), await replica(stack, pg_url)

        async def client(http: httpx.AsyncClient) -> list[httpx.Response]:
            sends = [http.post("/v1/reason", json=body, headers=headers) for _ in range(6)]
            return list(await asyncio.gather(*sends))

        first, second = await asyncio.gather(client(one), client(two))
    answers = first + second
    ok = [a.json() for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    async with KeyStore(pg_url) as keys:
        charged, held = await keys.tokens_today(key.id), await keys.reserved_today(key.id)
    spent = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in ok)
    assert len(ok) + len(refused) == 12 and ok and refused  # 12 x 104 would be 1,248 tokens
    assert all(a.json()["error"]["code"] == "daily_token_limit_exceeded" for a in refused)
    assert held == 0 and charged == spent
    assert charged <= LIMIT  # prompt tokens here are within their budget: no overshoot at all
