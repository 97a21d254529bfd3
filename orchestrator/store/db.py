"""The store's database: URLs, engines, tables and versioned migrations.

Where the store lives: the ``url`` argument, else ``$TTC_STORE_URL``, else the SQLite file
``<cache dir>/ttc.db`` where the cache dir is ``$TTC_CACHE_DIR``, else
``$XDG_CACHE_HOME/ttc``, else ``~/.cache/ttc``. A bare file path is read as a SQLite file;
``postgresql://`` and ``postgres://`` URLs use the psycopg (v3) driver.

Concurrency contract:

* SQLite: every connection runs ``PRAGMA busy_timeout=30000``, ``journal_mode=WAL`` and
  ``synchronous=NORMAL``, so readers never block writers and several processes can write the
  same file (one writer at a time; the others wait up to the busy timeout). SQLAlchemy, not the
  ``sqlite3`` module, emits ``BEGIN``: writes use ``BEGIN IMMEDIATE`` (see
  :func:`write_transaction`) so a writer takes the write lock before reading anything, and DDL
  is transactional. WAL needs a local file system (not NFS).
* PostgreSQL: the pool pings connections before use (``pool_pre_ping``); :func:`migrate` holds
  a transaction-scoped advisory lock, so concurrent processes migrate one at a time.

Migrations: ``MIGRATIONS`` is an append-only list of numbered steps; :func:`migrate` applies
the steps newer than the version recorded in the ``schema_version`` table, in one transaction,
and records each. To add a table: declare its model on :class:`Base` below, then append
``Migration(<next number>, "<what>", create_tables("<table>"))``. Never edit a released step;
change a table with a new step that alters it (``conn.execute(text("ALTER TABLE ..."))``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    BigInteger,
    Connection,
    Date,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from orchestrator.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "ttc_sqlite_begin"
_MIGRATION_LOCK_ID = 0x74746300  # "ttc\0": PostgreSQL advisory lock serialising migrate()
_URL_FIX = "set the store URL with $TTC_STORE_URL (a file path, sqlite:///PATH or postgresql://...)"


def default_cache_dir() -> Path:
    """The ttc cache directory: ``$TTC_CACHE_DIR``, else ``<$XDG_CACHE_HOME or ~/.cache>/ttc``."""
    if os.environ.get("TTC_CACHE_DIR"):
        return Path(os.environ["TTC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ttc"


def default_url() -> str:
    """The store URL used when none is given: ``$TTC_STORE_URL``, else ``<cache dir>/ttc.db``."""
    return normalize_url(os.environ.get("TTC_STORE_URL") or default_cache_dir() / "ttc.db")


def normalize_url(url: str | Path) -> str:
    """Turn what a user wrote into a SQLAlchemy URL string. Pure: no I/O.

    A path without ``://`` becomes ``sqlite:///<absolute path>`` (``~`` expanded);
    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``; anything else
    (``sqlite:///...``, ``postgresql+psycopg2://...``, other dialects) is returned unchanged.
    """
    raw = str(url).strip()
    if "://" not in raw:
        return "sqlite:///" + os.path.abspath(Path(raw).expanduser())
    scheme, rest = raw.split("://", 1)
    if scheme.lower() in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + rest
    return raw


DEFAULT_URL = default_url()
"""The default store URL at import time (call :func:`default_url` to re-read the environment)."""


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***`` (for messages and logs)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return str(url).split("@")[-1] if "@" in str(url) else str(url)
    return parsed.render_as_string(hide_password=True)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not emit BEGIN itself (it skips it before DDL and SELECT): _on_sqlite_begin
    # does. busy_timeout first, so that switching to WAL waits for a concurrent opener.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str | Path | None = None) -> Engine:
    """Create the Engine for ``url`` (default: :func:`default_url`); does not connect yet.

    SQLite: creates the file's parent directories and installs the per-connection pragmas and
    BEGIN handling described in the module docstring. PostgreSQL: ``pool_pre_ping=True`` and a
    10 s connect timeout unless the URL sets ``connect_timeout``.

    Raises:
        StoreError: the URL cannot be parsed, names an unknown dialect, its driver is not
            installed, or the SQLite directory cannot be created.
    """
    normalized = normalize_url(url if url is not None else default_url())
    masked = mask_url(normalized)
    try:
        parsed = make_url(normalized)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                path = Path(database).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                parsed = parsed.set(database=str(path))
            engine = create_engine(parsed)
            event.listen(engine, "connect", _on_sqlite_connect)
            event.listen(engine, "begin", _on_sqlite_begin)
            return engine
        if backend == "postgresql":
            connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
            return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        return create_engine(parsed)
    except ImportError as exc:
        raise StoreError(
            f"the database driver for the store {masked!r} is not installed ({exc}). "
            "Fix: install it, or use SQLite or PostgreSQL (psycopg is a ttc dependency)",
            url=masked,
        ) from exc
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(
            f"invalid store URL {masked!r}: {exc}. Fix: {_URL_FIX}", url=masked
        ) from exc
    except OSError as exc:
        raise StoreError(
            f"cannot create the directory of the SQLite store {masked!r}: {exc}. "
            "Fix: choose a writable location ($TTC_STORE_URL or $TTC_CACHE_DIR)",
            url=masked,
        ) from exc


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction meant to write: ``BEGIN IMMEDIATE`` on SQLite, a plain BEGIN elsewhere.

    Commits on normal exit, rolls back on an exception (which propagates unchanged).
    """
    with engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}).begin() as conn:
        yield conn


def is_transient(exc: BaseException) -> bool:
    """True for errors that the same operation may not hit again: a locked or busy SQLite
    database, a PostgreSQL deadlock (40P01) or serialization failure (40001)."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database table is locked" in message


def store_error(url: str | URL, exc: BaseException, action: str) -> StoreError:
    """Translate a database exception raised while doing ``action`` into a StoreError whose
    message names the (masked) URL and the fix; ``retryable`` follows :func:`is_transient`."""
    masked = mask_url(url)
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0] if detail else type(exc).__name__
    sqlite = masked.startswith("sqlite")
    if is_transient(exc):
        fix = (
            "another process held the SQLite write lock too long; retry, or use PostgreSQL "
            "for many concurrent writers"
            if sqlite
            else "retry the operation"
        )
        return StoreError(
            f"{action} the store {masked!r} failed: {reason}. Fix: {fix}",
            url=masked,
            retryable=True,
        )
    if isinstance(exc, OperationalError):
        fix = (
            "check that the file's directory exists and is writable and the file is a SQLite "
            f"database, or {_URL_FIX}"
            if sqlite
            else "check that the database server is running and reachable and that the URL's "
            f"user, password, host, port and database are right, or {_URL_FIX}"
        )
        where = "open" if sqlite else "connect to"
        return StoreError(
            f"could not {where} the store {masked!r} while {action}: {reason}. Fix: {fix}",
            url=masked,
        )
    return StoreError(
        f"{action} the store {masked!r} failed: {type(exc).__name__}: {reason}", url=masked
    )


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every store table (all tables live in this module)."""


class SchemaVersion(Base):
    """One applied migration step."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Completion(Base):
    """One cached sample: see ``orchestrator.store.cache``."""

    __tablename__ = "completions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(512))
    candidate: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


_ROW_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite: an alias of the rowid


class Run(Base):
    """One service run (``orchestrator.store.run_store``); JSON columns hold compact JSON text.
    ``seq`` is the insertion order (it breaks ties of ``created_at``); ``id`` the run id."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_created", "created_at", "seq"),
        Index("ix_runs_status_created", "status", "created_at", "seq"),
    )

    seq: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    request: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    usage: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class ApiKeyRow(Base):
    """One API key: see ``orchestrator.store.keys``. Only the key's sha256 is stored.

    A name is unique among the active (not revoked) keys: a partial unique index. ``seq`` is
    the insertion order; ``id`` is the key id the API shows.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    seq: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_token_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    scopes: Mapped[str | None] = mapped_column(Text, nullable=True)  # a JSON list of grants


class ApiKeyUsage(Base):
    """Tokens spent by one API key on one UTC day, and those reserved by its runs in flight."""

    __tablename__ = "api_key_usage"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class TokenReservation(Base):
    """The tokens one run in flight holds against its key's daily limit (on ``day``)."""

    __tablename__ = "token_reservations"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), index=True)
    day: Mapped[date] = mapped_column(Date)
    tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


def table(name: str) -> Table:
    """The Core ``Table`` called ``name`` (e.g. ``"completions"``)."""
    return Base.metadata.tables[name]


@dataclass(frozen=True)
class Migration:
    """One schema step: ``apply`` runs inside the migration transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def create_tables(*names: str) -> Callable[[Connection], None]:
    """A migration step that creates the named tables as currently declared on :class:`Base`."""

    def apply(conn: Connection) -> None:
        Base.metadata.create_all(conn, tables=[table(n) for n in names], checkfirst=True)

    return apply


def add_columns(name: str, *columns: str) -> Callable[[Connection], None]:
    """A migration step that adds the named columns of table ``name``, as declared on
    :class:`Base`, when they are missing (an earlier step may have created the table with
    them already: ``create_tables`` creates tables as currently declared)."""

    def apply(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(name)}
        for column in (table(name).c[c] for c in columns if c not in present):
            kind = column.type.compile(dialect=conn.dialect)
            value = getattr(column.server_default, "arg", None)
            default = "" if value is None else f" DEFAULT {value}"
            null = "" if column.nullable else " NOT NULL"
            conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {column.name} {kind}{default}{null}"))

    return apply


def _steps(*steps: Callable[[Connection], None]) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for step in steps:
            step(conn)

    return apply


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "completion cache", create_tables("completions")),
    Migration(2, "runs and API keys", create_tables("runs", "api_keys", "api_key_usage")),
    Migration(
        3,
        "API key scopes and daily token reservations",
        _steps(
            add_columns("api_keys", "scopes"),
            add_columns("api_key_usage", "reserved"),
            create_tables("token_reservations"),
        ),
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The highest recorded schema version; 0 when nothing was migrated yet."""
    if not conn.dialect.has_table(conn, SchemaVersion.__tablename__):
        return 0
    return int(conn.scalar(select(func.max(SchemaVersion.version))) or 0)


def migrate(engine: Engine) -> int:
    """Bring the schema to ``LATEST_VERSION`` and return it. Idempotent.

    Runs in one write transaction; concurrent callers in several processes are serialised
    (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so each step runs once.

    Raises:
        StoreError: the database cannot be reached or written (``retryable`` when it was
            only locked), or it was migrated by a newer ttc (version above ``LATEST_VERSION``).
    """
    try:
        with write_transaction(engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            table(SchemaVersion.__tablename__).create(conn, checkfirst=True)
            current = current_version(conn)
            if current > LATEST_VERSION:
                masked = mask_url(engine.url)
                raise StoreError(
                    f"the store {masked!r} has schema version {current}, newer than this ttc "
                    f"understands ({LATEST_VERSION}). Fix: upgrade ttc, or use another store",
                    url=masked,
                )
            for step in MIGRATIONS:
                if step.version > current:
                    step.apply(conn)
                    conn.execute(
                        insert(table(SchemaVersion.__tablename__)).values(
                            version=step.version, description=step.description, applied_at=_now()
                        )
                    )
            return max(current, LATEST_VERSION)
    except SQLAlchemyError as exc:
        raise store_error(engine.url, exc, "opening") from exc
