"""Fixtures shared by the unit tests.

``store_url``: every store test runs twice, on a SQLite file under ``tmp_path`` and on
PostgreSQL (``$TTC_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``).
Each PostgreSQL test gets its own schema (``search_path``), dropped afterwards, so parallel runs
on one server never see each other's rows. An unreachable server skips the PostgreSQL tests,
unless ``CI`` or ``TTC_REQUIRE_POSTGRES`` is set: then they fail.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

POSTGRES_URL = os.environ.get("TTC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def _postgres_unreachable() -> str | None:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()}"


def _require_postgres() -> None:
    reason = _postgres_unreachable()
    if reason is None:
        return
    if os.environ.get("CI") or os.environ.get("TTC_REQUIRE_POSTGRES"):
        pytest.fail(f"{reason} (CI or TTC_REQUIRE_POSTGRES is set: PostgreSQL tests must run)")
    pytest.skip(f"{reason}; set TTC_REQUIRE_POSTGRES=1 to make this a failure")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'ttc.db'}"
        return
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
