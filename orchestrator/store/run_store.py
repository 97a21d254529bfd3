"""Persistent runs of the ttc service: request, status, result (with its trace), usage, error.

Lifecycle of a run::

    create() -> queued --mark_running()--> running --finish()--> succeeded | failed | cancelled
                  \\_______________________finish()_______________/

Contract:

* A finished run is final: ``finish`` and ``mark_running`` only change a run that is still
  queued (``mark_running``) or queued/running (``finish``), and report whether they did. So the
  first of two racing finishes wins (e.g. a cancel and the run's own end), and a run that
  :meth:`RunStore.fail_interrupted` marked failed is never revived by a late writer.
* ``fail_interrupted`` is meant for service start-up: every run still queued or running was
  owned by a process that is gone, so it becomes ``failed`` with
  ``error = {"message": reason, "type": "interrupted", "code": None}``. It assumes ONE service
  process per store: a second live process sharing the database would see its in-flight runs
  failed.
* JSON columns (request, result, usage, error) round-trip any JSON-compatible dict exactly,
  including large traces (several MB; the ``TEXT`` columns have no practical limit on SQLite or
  PostgreSQL). Timestamps come back as aware UTC datetimes.
* All work runs in a worker thread (see ``orchestrator.store.base``); any number of coroutines
  and processes may use one database. Database failures raise ``StoreError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel
from sqlalchemy import Engine, Row, false, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from orchestrator.errors import StoreError
from orchestrator.store.base import StoreClient, as_utc
from orchestrator.store.db import Run, write_transaction

T = TypeVar("T")

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running")
FINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
MAX_LIST_LIMIT = 1000
"""The most runs one :meth:`RunStore.list` call returns."""


class RunRecord(BaseModel):
    """A run as the API returns it.

    Attributes:
        id: the run id.
        status: queued, running, succeeded, failed or cancelled.
        created_at: when the run was created (aware UTC, like every timestamp here).
        started_at: when it started running (None while queued, or if it never ran).
        finished_at: when it reached a final status (None while queued or running).
        request: the ReasonRequest as JSON.
        result: ``Result.model_dump(mode="json")`` including the trace, or None.
        usage: ``Usage`` as JSON, or None.
        error: ``{"message", "type", "code"}`` for a failed or cancelled run, or None.
        key_id: the id of the API key that created the run, or None.
    """

    id: str
    status: RunStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any]
    result: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    key_id: str | None = None

    @property
    def finished(self) -> bool:
        """True once the run reached a final status."""
        return self.status in FINAL_STATUSES


def _dumps(value: dict[str, Any] | None) -> str | None:
    # Compact JSON; ASCII-escaped so that lone surrogates and NUL survive any database encoding.
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else json.loads(raw)


def _check_status(status: str, allowed: tuple[str, ...], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"invalid {what} {status!r}: expected one of {', '.join(allowed)}")


_COLUMNS = (
    Run.id,
    Run.status,
    Run.created_at,
    Run.started_at,
    Run.finished_at,
    Run.request,
    Run.usage,
    Run.error,
    Run.key_id,
)


def _record(row: Row[*tuple[Any, ...]], result: str | None) -> RunRecord:
    def opt(value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    return RunRecord(
        id=row.id,
        status=row.status,
        created_at=as_utc(row.created_at),
        started_at=opt(row.started_at),
        finished_at=opt(row.finished_at),
        request=json.loads(row.request),
        result=_loads(result),
        usage=_loads(row.usage),
        error=_loads(row.error),
        key_id=row.key_id,
    )


class RunStore(StoreClient):
    """Persistent runs in the store database (see the module docstring).

    Args:
        url: the store URL or SQLite file path (default: ``orchestrator.store.db.default_url()``).
        lock_retries: retries of an operation that hit a locked database or a deadlock.
        retry_backoff: first retry delay in seconds; doubled each retry, with jitter.
        clock: the time source of the timestamps (aware datetimes; tests inject one).

    ``open()`` creates the engine and migrates the schema (else the first call does);
    ``aclose()`` disposes it. Also an async context manager.
    """

    async def create(
        self, run_id: str, request: dict[str, Any], key_id: str | None = None
    ) -> RunRecord:
        """Persist a new run, status ``queued``, and return it.

        Raises:
            ValueError: a run with this id exists already.
        """
        record = RunRecord(
            id=run_id, status="queued", created_at=self._now(), request=request, key_id=key_id
        )
        values = {
            "id": run_id,
            "status": "queued",
            "created_at": record.created_at,
            "request": _dumps(request),
            "key_id": key_id,
        }

        def write(engine: Engine) -> None:
            try:
                with write_transaction(engine) as conn:
                    conn.execute(insert(Run), values)
            except IntegrityError as exc:
                raise ValueError(f"a run with id {run_id!r} exists already") from exc

        await self._run("writing", write)
        return record

    async def mark_running(self, run_id: str) -> bool:
        """Move a queued run to ``running`` and set ``started_at``.

        Returns False (and changes nothing) when the run is unknown or no longer queued.
        """
        return await self._update(
            run_id, ("queued",), {"status": "running", "started_at": self._now()}
        )

    async def finish(
        self,
        run_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Give a queued or running run its final status and outputs; set ``finished_at``.

        Returns False (and changes nothing) when the run is unknown or already finished.

        Raises:
            ValueError: ``status`` is not succeeded, failed or cancelled.
        """
        _check_status(status, FINAL_STATUSES, "final run status")
        values = {
            "status": status,
            "finished_at": self._now(),
            "result": _dumps(result),
            "usage": _dumps(usage),
            "error": _dumps(error),
        }
        return await self._update(run_id, ACTIVE_STATUSES, values)

    async def get(self, run_id: str) -> RunRecord | None:
        """The run called ``run_id``, or None."""

        def read(engine: Engine) -> RunRecord | None:
            with engine.connect() as conn:
                row = conn.execute(select(*_COLUMNS, Run.result).where(Run.id == run_id)).first()
            return None if row is None else _record(row, row.result)

        return await self._read(read)

    async def list(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        include_result: bool = True,
        key_ids: Collection[str | None] | None = None,
    ) -> list[RunRecord]:
        """The newest runs first (creation time, then insertion order), at most ``limit``.

        Args:
            limit: 1 to :data:`MAX_LIST_LIMIT`.
            status: only runs with this status.
            include_result: False leaves ``result`` None in every record, without reading it
                (results carry traces and may be large).
            key_ids: only runs created with one of these key ids (``None`` in it: runs
                created without a key), e.g. ``{key.id, None}`` for what a key may see.

        Raises:
            ValueError: ``limit`` out of range or an unknown ``status``.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"invalid limit {limit}: expected 1 to {MAX_LIST_LIMIT}")
        query = select(*_COLUMNS, Run.result) if include_result else select(*_COLUMNS)
        if status is not None:
            _check_status(status, RUN_STATUSES, "run status")
            query = query.where(Run.status == status)
        if key_ids is not None:
            named = [k for k in key_ids if k is not None]
            query = query.where(
                or_(Run.key_id.in_(named), Run.key_id.is_(None) if None in key_ids else false())
            )
        query = query.order_by(Run.created_at.desc(), Run.seq.desc()).limit(limit)

        def read(engine: Engine) -> list[RunRecord]:
            with engine.connect() as conn:
                rows = conn.execute(query).all()
            return [_record(row, row.result if include_result else None) for row in rows]

        return await self._read(read)

    async def fail_interrupted(self, reason: str) -> int:
        """Mark every queued or running run ``failed`` with
        ``error = {"message": reason, "type": "interrupted", "code": None}``; call on start.

        Returns:
            How many runs were marked.
        """
        error = {"message": reason, "type": "interrupted", "code": None}
        values = {"status": "failed", "finished_at": self._now(), "error": _dumps(error)}

        def write(engine: Engine) -> int:
            with write_transaction(engine) as conn:
                statement = update(Run).where(Run.status.in_(ACTIVE_STATUSES)).values(values)
                return int(conn.execute(statement).rowcount or 0)

        return await self._run("writing", write)

    # -- internals ---------------------------------------------------------------------------

    async def _update(self, run_id: str, when: tuple[str, ...], values: dict[str, Any]) -> bool:
        def write(engine: Engine) -> bool:
            with write_transaction(engine) as conn:
                statement = update(Run).where(Run.id == run_id, Run.status.in_(when)).values(values)
                return bool(conn.execute(statement).rowcount)

        return await self._run("writing", write)

    async def _read(self, op: Callable[[Engine], T]) -> T:
        try:
            return await self._run("reading", op)
        except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError
            raise StoreError(
                f"a run in {self.masked_url!r} is unreadable ({exc})", url=self.masked_url
            ) from exc
