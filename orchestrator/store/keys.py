"""API keys of the ttc service, stored hashed, and the tokens each key spends per UTC day.

Contract:

* :meth:`KeyStore.create` returns the plaintext key exactly once: ``"ttc-"`` followed by
  ``secrets.token_urlsafe(32)`` (256 random bits). Only its sha256 hex digest and a short
  display prefix (``"ttc-"`` and the next 8 characters) are stored. A fast unsalted hash is the
  right tool here: the key is high-entropy random, so neither a dictionary attack nor a
  precomputed table can reverse the digest, and a slow password hash (bcrypt, argon2) would only
  add latency to every request. The digest is unique, so :meth:`KeyStore.verify` finds the row
  by an indexed lookup and then compares digests in constant time (``hmac.compare_digest``).
* A key's name is unique among the active keys (a revoked key's name may be reused).
  :meth:`KeyStore.revoke` takes a key id or an active key's name; revoking is final.
* Token usage is one counter per (key, UTC day), incremented atomically (an upsert), so
  concurrent writers in any number of processes never lose an increment. The day comes from
  the injectable ``clock``.
* Daily limits hold across processes sharing the database by reservation:
  :meth:`KeyStore.reserve` grants a run at most what is left of its key's limit today
  (spent + reserved), in one transaction that locks the key's counter row before reading it
  (PostgreSQL: the upsert that creates it and ``SELECT ... FOR UPDATE``; SQLite:
  ``BEGIN IMMEDIATE``), so concurrent admissions in any number of replicas never grant more
  than the limit together (``tests/unit/test_store_keys.py`` fails without the lock).
  :meth:`KeyStore.settle` ends a run's reservation and charges what it spent;
  :meth:`KeyStore.release_stale` ends the reservations of runs that are no longer queued or
  running (a process that died mid-run).
* A key's ``scopes`` are the grants of privileged config fields (``orchestrator.trust``) its
  requests may use: privilege names or single fields, stored as a JSON list.
* All work runs in a worker thread (see ``orchestrator.store.base``); database failures raise
  ``StoreError``.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, Row, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from orchestrator.errors import ConfigError
from orchestrator.store.base import StoreClient, as_utc
from orchestrator.store.db import (
    ApiKeyRow,
    ApiKeyUsage,
    Run,
    TokenReservation,
    table,
    write_transaction,
)

KEY_PREFIX = "ttc-"
DISPLAY_CHARS = 8
"""Characters of the secret part kept (in clear) in the display prefix."""
MAX_KEY_LENGTH = 256
"""Longer strings are rejected by :meth:`KeyStore.verify` without hashing them."""
MAX_NAME_LENGTH = 200


class ApiKey(BaseModel):
    """An API key as shown to an administrator: never the key itself nor its hash.

    Attributes:
        id: the key id (``"key_"`` + 16 hex digits).
        name: the name given at creation.
        prefix: the start of the key (``"ttc-"`` + 8 characters), to recognise it.
        created_at: creation time (aware UTC).
        revoked_at: revocation time, or None while the key is active.
        rpm_limit: requests per minute allowed, or None for no limit.
        daily_token_limit: tokens per UTC day allowed, or None for no limit.
        scopes: privileged config fields this key may set (privileges such as ``network``,
            or single fields such as ``verifier.unit_tests.tests``); none by default.
    """

    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    rpm_limit: int | None = None
    daily_token_limit: int | None = None
    scopes: list[str] = Field(default_factory=list)

    @property
    def active(self) -> bool:
        """True while the key is not revoked."""
        return self.revoked_at is None


def hash_key(plaintext: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"invalid {name} {value}: expected a positive integer, or no limit")


_COLUMNS = (
    ApiKeyRow.id,
    ApiKeyRow.name,
    ApiKeyRow.prefix,
    ApiKeyRow.created_at,
    ApiKeyRow.revoked_at,
    ApiKeyRow.rpm_limit,
    ApiKeyRow.daily_token_limit,
    ApiKeyRow.scopes,
)


def _key(row: Row[*tuple[Any, ...]]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=as_utc(row.created_at),
        revoked_at=None if row.revoked_at is None else as_utc(row.revoked_at),
        rpm_limit=row.rpm_limit,
        daily_token_limit=row.daily_token_limit,
        scopes=json.loads(row.scopes) if row.scopes else [],
    )


class KeyStore(StoreClient):
    """API keys and their daily token usage in the store database (see the module docstring).

    Args:
        url: the store URL or SQLite file path (default: ``orchestrator.store.db.default_url()``).
        lock_retries: retries of an operation that hit a locked database or a deadlock.
        retry_backoff: first retry delay in seconds; doubled each retry, with jitter.
        clock: the time source (aware datetimes): timestamps, and the UTC day of token usage.

    ``open()`` creates the engine and migrates the schema (else the first call does);
    ``aclose()`` disposes it. Also an async context manager.
    """

    async def create(
        self,
        name: str,
        *,
        rpm_limit: int | None = None,
        daily_token_limit: int | None = None,
        scopes: Sequence[str] = (),
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it and its plaintext, which is not stored and cannot be
        recovered later. ``scopes`` are stored as given (the caller validates them).

        Raises:
            ConfigError: empty or too long name, an active key with this name exists, or a
                limit below 1.
        """
        name = name.strip()
        if not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise ConfigError(f"invalid key name {name!r}: expected 1 to {MAX_NAME_LENGTH} chars")
        _check_limit("rpm_limit", rpm_limit)
        _check_limit("daily_token_limit", daily_token_limit)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            prefix=plaintext[: len(KEY_PREFIX) + DISPLAY_CHARS],
            created_at=self._now(),
            rpm_limit=rpm_limit,
            daily_token_limit=daily_token_limit,
            scopes=list(dict.fromkeys(scopes)),
        )
        row = {
            **key.model_dump(exclude={"revoked_at", "scopes"}),
            "scopes": json.dumps(key.scopes) if key.scopes else None,
            "key_hash": hash_key(plaintext),
        }

        def write(engine: Engine) -> None:
            try:
                with write_transaction(engine) as conn:
                    conn.execute(insert(ApiKeyRow), row)
            except IntegrityError as exc:
                raise ConfigError(
                    f"an active API key named {name!r} exists already. "
                    "Fix: choose another name, or revoke that key first"
                ) from exc

        await self._run("writing", write)
        return key, plaintext

    async def verify(self, plaintext: str) -> ApiKey | None:
        """The active key whose plaintext this is; None for an unknown or revoked key."""
        if not plaintext or len(plaintext) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(plaintext)

        def read(engine: Engine) -> ApiKey | None:
            with engine.connect() as conn:
                row = conn.execute(
                    select(*_COLUMNS, ApiKeyRow.key_hash).where(ApiKeyRow.key_hash == digest)
                ).first()
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                return None
            key = _key(row)
            return key if key.active else None

        return await self._run("reading", read)

    async def revoke(self, key_id_or_name: str) -> bool:
        """Revoke the key with this id, else the active key with this name.

        Returns:
            True when a key was revoked now; False when none matched or it was revoked already.
        """
        target = key_id_or_name.strip()
        active = ApiKeyRow.revoked_at.is_(None)

        def write(engine: Engine) -> bool:
            revoked_at = self._now()
            with write_transaction(engine) as conn:
                by_id = update(ApiKeyRow).where(ApiKeyRow.id == target, active)
                if conn.execute(by_id.values(revoked_at=revoked_at)).rowcount:
                    return True
                if conn.scalar(select(exists().where(ApiKeyRow.id == target))):
                    return False  # that id, revoked already: never fall back to names
                by_name = update(ApiKeyRow).where(ApiKeyRow.name == target, active)
                return bool(conn.execute(by_name.values(revoked_at=revoked_at)).rowcount)

        return await self._run("writing", write)

    async def list(self, *, include_revoked: bool = True) -> builtins.list[ApiKey]:
        """Every key (oldest first); only the active ones when ``include_revoked`` is False."""
        query = select(*_COLUMNS).order_by(ApiKeyRow.created_at, ApiKeyRow.seq)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))

        def read(engine: Engine) -> builtins.list[ApiKey]:
            with engine.connect() as conn:
                return [_key(row) for row in conn.execute(query)]

        return await self._run("reading", read)

    async def any_active(self) -> bool:
        """True when at least one key is active (the service then requires a key)."""

        def read(engine: Engine) -> bool:
            with engine.connect() as conn:
                return bool(conn.scalar(select(exists().where(ApiKeyRow.revoked_at.is_(None)))))

        return await self._run("reading", read)

    async def add_tokens(self, key_id: str, tokens: int) -> int:
        """Add ``tokens`` to the key's counter for the current UTC day; returns the day's new
        total. Zero adds nothing.

        Raises:
            ValueError: ``tokens`` is negative.
        """
        if tokens < 0:
            raise ValueError(f"invalid token count {tokens}: expected 0 or more")
        if tokens == 0:
            return await self.tokens_today(key_id)
        day = self._now().date()

        def write(engine: Engine) -> int:
            with write_transaction(engine) as conn:
                _upsert_usage(conn, key_id, day, tokens)
                return _tokens_on(conn, key_id, day)

        return await self._run("writing", write)

    async def tokens_today(self, key_id: str) -> int:
        """Tokens the key spent on the current UTC day."""
        day = self._now().date()

        def read(engine: Engine) -> int:
            with engine.connect() as conn:
                return _tokens_on(conn, key_id, day)

        return await self._run("reading", read)

    async def reserve(self, key_id: str, run_id: str, tokens: int, limit: int) -> int:
        """Reserve up to ``tokens`` of the key's ``limit`` for today for run ``run_id``; returns
        the tokens granted: ``min(tokens, limit - spent - reserved)``, 0 when nothing is left
        (then nothing is recorded). Atomic across processes (see the module docstring).
        """
        if tokens < 1:
            raise ValueError(f"invalid reservation {tokens}: expected 1 or more")
        day = self._now().date()
        usage = table(ApiKeyUsage.__tablename__)

        def write(engine: Engine) -> int:
            with write_transaction(engine) as conn:
                _upsert_usage(conn, key_id, day, 0)  # the row exists, so it can be locked
                row = conn.execute(
                    select(usage.c.tokens, usage.c.reserved)
                    .where(usage.c.key_id == key_id, usage.c.day == day)
                    .with_for_update()
                ).one()
                granted = max(0, min(tokens, limit - int(row.tokens) - int(row.reserved)))
                if granted:
                    conn.execute(
                        update(usage)
                        .where(usage.c.key_id == key_id, usage.c.day == day)
                        .values(reserved=usage.c.reserved + granted)
                    )
                    conn.execute(
                        insert(TokenReservation).values(
                            run_id=run_id, key_id=key_id, day=day, tokens=granted,
                            created_at=self._now(),
                        )
                    )  # fmt: skip
                return granted

        return await self._run("writing", write)

    async def settle(self, key_id: str, run_id: str, tokens: int) -> None:
        """End run ``run_id``'s reservation (if any) and charge the ``tokens`` it spent to the
        key's counter for today, in one transaction."""
        if tokens < 0:
            raise ValueError(f"invalid token count {tokens}: expected 0 or more")
        day = self._now().date()

        def write(engine: Engine) -> None:
            with write_transaction(engine) as conn:
                _end_reservations(conn, TokenReservation.run_id == run_id)
                if tokens:
                    _upsert_usage(conn, key_id, day, tokens)

        await self._run("writing", write)

    async def reserved_today(self, key_id: str) -> int:
        """Tokens the key's runs in flight hold today."""
        day = self._now().date()
        usage = table(ApiKeyUsage.__tablename__)
        query = select(usage.c.reserved).where(usage.c.key_id == key_id, usage.c.day == day)

        def read(engine: Engine) -> int:
            with engine.connect() as conn:
                return int(conn.scalar(query) or 0)

        return await self._run("reading", read)

    async def release_stale(self) -> int:
        """End the reservations of runs that are no longer queued or running (their process
        died before settling); returns how many were ended."""
        live = select(Run.id).where(Run.status.in_(("queued", "running")))

        def write(engine: Engine) -> int:
            with write_transaction(engine) as conn:
                return _end_reservations(conn, TokenReservation.run_id.not_in(live))

        return await self._run("writing", write)


def _end_reservations(conn: Connection, where: Any) -> int:
    """Delete the reservations matching ``where`` and give their tokens back; how many."""
    rows = conn.execute(
        select(TokenReservation.run_id, TokenReservation.key_id, TokenReservation.day,
               TokenReservation.tokens).where(where)
    ).all()  # fmt: skip
    usage = table(ApiKeyUsage.__tablename__)
    for row in rows:
        conn.execute(
            update(usage)
            .where(usage.c.key_id == row.key_id, usage.c.day == row.day)
            .values(reserved=usage.c.reserved - row.tokens)
        )
        conn.execute(delete(TokenReservation).where(TokenReservation.run_id == row.run_id))
    return len(rows)


def _tokens_on(conn: Connection, key_id: str, day: date) -> int:
    """The (key, day) counter; 0 when absent."""
    query = select(ApiKeyUsage.tokens).where(ApiKeyUsage.key_id == key_id, ApiKeyUsage.day == day)
    return int(conn.scalar(query) or 0)


def _upsert_usage(conn: Connection, key_id: str, day: date, tokens: int) -> None:
    """Add ``tokens`` to the (key, day) counter, creating it: one atomic statement."""
    usage = table(ApiKeyUsage.__tablename__)
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        dialect_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        statement = dialect_insert(usage).values(key_id=key_id, day=day, tokens=tokens)
        statement = statement.on_conflict_do_update(
            index_elements=["key_id", "day"],
            set_={"tokens": usage.c.tokens + statement.excluded.tokens},
        )
        conn.execute(statement)
        return
    changed = conn.execute(
        update(usage)
        .where(usage.c.key_id == key_id, usage.c.day == day)
        .values(tokens=usage.c.tokens + tokens)
    ).rowcount
    if not changed:
        conn.execute(insert(usage).values(key_id=key_id, day=day, tokens=tokens))
