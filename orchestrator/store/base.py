"""What every store object shares: one Engine, migrated on first use, driven from asyncio.

Contract for subclasses (``RunStore``, ``KeyStore``, ``CompletionCache``):

* All database work is synchronous SQLAlchemy passed to :meth:`StoreClient._run` as a function
  of the Engine; it runs in ``asyncio.to_thread``, so the event loop is never blocked.
* One Engine (and connection pool) per store object, created and migrated (:func:`migrate`) on
  first use or by :meth:`StoreClient.open`; :meth:`StoreClient.aclose` disposes it, and a later
  call opens it again.
* A locked SQLite database (after its busy timeout) or a PostgreSQL deadlock / serialization
  failure is retried ``lock_retries`` times with exponential backoff and jitter, so an operation
  must be safe to run again after it failed (such failures happen before the commit). Every
  database failure surfaces as ``StoreError`` naming the URL with the password masked.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import StoreError
from orchestrator.store.db import (
    default_url,
    make_engine,
    mask_url,
    migrate,
    normalize_url,
    store_error,
)

T = TypeVar("T")

Clock = Callable[[], datetime]
"""Returns the current time; must be timezone-aware (naive values are read as UTC)."""


def utc_now() -> datetime:
    """The current time in UTC (the default :data:`Clock`)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive value (SQLite returns those) is UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StoreClient:
    """Base of the store objects: the engine, its lifecycle and the retry loop.

    Args:
        url: the store URL or SQLite file path (default: ``orchestrator.store.db.default_url()``).
        lock_retries: retries of an operation that hit a locked database or a deadlock.
        retry_backoff: first retry delay in seconds; doubled each retry, with jitter.
        clock: the time source for every timestamp the store writes (tests inject one).
    """

    def __init__(
        self,
        url: str | Path | None = None,
        *,
        lock_retries: int = 3,
        retry_backoff: float = 0.1,
        clock: Clock = utc_now,
    ) -> None:
        self.url = normalize_url(url if url is not None else default_url())
        self.lock_retries = lock_retries
        self.retry_backoff = retry_backoff
        self.clock = clock
        self._engine: Engine | None = None
        self._init_lock = threading.Lock()

    @property
    def masked_url(self) -> str:
        """The store URL with its password masked."""
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.masked_url!r})"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the engine and migrate the schema now rather than on first use. Idempotent.

        Raises:
            StoreError: the database cannot be reached, written or migrated.
        """
        await self._run("opening", lambda engine: None)

    async def aclose(self) -> None:
        """Dispose the engine and its pooled connections. Idempotent."""
        await asyncio.to_thread(self._dispose)

    def _now(self) -> datetime:
        return as_utc(self.clock())

    def _ready_engine(self) -> Engine:
        """The engine, created and migrated on first use (runs in a worker thread)."""
        with self._init_lock:
            if self._engine is None:
                engine = make_engine(self.url)
                try:
                    migrate(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
            return self._engine

    def _dispose(self) -> None:
        with self._init_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def _call(self, action: str, op: Callable[[Engine], T]) -> T:
        engine = self._ready_engine()
        try:
            return op(engine)
        except SQLAlchemyError as exc:
            raise store_error(engine.url, exc, action) from exc

    async def _run(self, action: str, op: Callable[[Engine], T]) -> T:
        """Run ``op`` in a worker thread, retrying transient (lock / deadlock) failures."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(self._call, action, op)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                if attempt >= self.lock_retries:
                    raise StoreError(
                        f"{exc} (gave up after {attempt + 1} attempts)",
                        url=exc.url,
                        retryable=True,
                    ) from exc
                delay = self.retry_backoff * (2**attempt) * (1 + random.random())
                attempt += 1
                await asyncio.sleep(delay)
