"""The completion cache: sampled candidates keyed by request, persisted in the store database.

A sample is identified by ``(key, sample_index)``: ``key`` is :func:`cache_key` of the model and
the request's sampling parameters, ``sample_index`` is the sample's position among the samples
of that request (0, 1, ...). Asking for ``n=8`` after an earlier ``n=4`` therefore reuses samples
0-3 and only generates 4-7.

Contract:

* First writer wins: ``put_many`` never overwrites an existing ``(key, index)``; a sample that
  another writer (coroutine or process) stored first is kept, silently. A value once read is
  therefore never replaced.
* Failed candidates (``candidate.error is not None``) are never stored.
* Candidates are stored with ``cached=False`` and come back with ``cached=True``; everything
  else (text, tokens, logprobs with their top alternatives, finish reason, answer) round-trips.
* All database work is synchronous SQLAlchemy run in ``asyncio.to_thread``: the event loop is
  never blocked. One Engine (and connection pool) per cache; any number of coroutines may use a
  cache concurrently, and any number of processes may share one database.
* A locked SQLite database (after its 30 s busy timeout) or a PostgreSQL deadlock /
  serialization failure is retried ``lock_retries`` times with exponential backoff, then raised
  as a ``StoreError``. Every database failure surfaces as ``StoreError`` naming the URL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, delete, distinct, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from orchestrator.backends.base import GenerationRequest
from orchestrator.errors import StoreError
from orchestrator.store.base import StoreClient
from orchestrator.store.db import Completion, table, write_transaction
from orchestrator.types import Candidate

KEY_FORMAT_VERSION = 1
"""Part of every key: bump it when the canonical form changes, to orphan all old entries."""

_READ_CHUNK = 500  # indices per SELECT (stays below every dialect's bound-parameter limit)


@dataclass(frozen=True)
class CachedSample:
    """One cached sample and the prompt tokens of the call that produced it."""

    candidate: Candidate
    prompt_tokens: int = 0


def cache_key(model: str, request: GenerationRequest) -> str:
    """The sha256 hex digest identifying ``request`` sent to ``model``.

    Covers everything that changes the distribution of a single sample: the model, the messages
    (role and content) or the raw prompt, ``continue_final``, ``temperature``, ``top_p``,
    ``max_tokens``, ``stop`` (as a set: order and duplicates do not matter), ``logprobs`` and
    ``top_logprobs``. Deliberately NOT ``n`` and NOT ``seed``: the cache stores individual
    samples under ``(key, sample_index)``, so a larger ``n`` later extends the same entry
    instead of missing it, and the sample index already names a sample deterministically
    (which is what a seed would buy). The backend's name is not part of it either: two servers
    of the same model share entries.
    """
    payload: dict[str, Any] = {
        "v": KEY_FORMAT_VERSION,
        "model": model,
        "messages": (
            [{"role": m.role, "content": m.content} for m in request.messages]
            if request.messages is not None
            else None
        ),
        "prompt": request.prompt,
        "continue_final": request.continue_final,
        "temperature": float(request.temperature),
        "top_p": float(request.top_p),
        "max_tokens": int(request.max_tokens),
        "stop": sorted(set(request.stop)) if request.stop else None,
        "logprobs": request.logprobs,
        "top_logprobs": int(request.top_logprobs),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _dump(candidate: Candidate) -> str:
    # json.dumps keeps -inf logprobs (as -Infinity); pydantic's JSON mode would turn them to null.
    return json.dumps(candidate.model_copy(update={"cached": False}).model_dump(mode="python"))


def _load(raw: str) -> Candidate:
    return Candidate.model_validate(json.loads(raw)).model_copy(update={"cached": True})


class CompletionCache(StoreClient):
    """Persistent ``(key, sample_index) -> CachedSample`` store (see the module docstring).

    Engine lifecycle, migration on first use, ``open()``/``aclose()``, the async context
    manager and the lock / deadlock retries come from :class:`StoreClient` (arguments: ``url``,
    ``lock_retries``, ``retry_backoff``).
    """

    async def get_many(self, key: str, indices: Sequence[int]) -> dict[int, CachedSample]:
        """The cached samples of ``key`` at ``indices``; missing indices are absent from the
        result. Candidates come back with ``cached=True``."""
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            return {}

        def read(engine: Engine) -> dict[int, CachedSample]:
            out: dict[int, CachedSample] = {}
            with engine.connect() as conn:
                for start in range(0, len(wanted), _READ_CHUNK):
                    chunk = wanted[start : start + _READ_CHUNK]
                    rows = conn.execute(
                        select(
                            Completion.sample_index, Completion.candidate, Completion.prompt_tokens
                        ).where(Completion.key == key, Completion.sample_index.in_(chunk))
                    ).all()
                    for index, raw, prompt_tokens in rows:
                        out[index] = CachedSample(self._parse(raw, key, index), prompt_tokens)
            return out

        return await self._run("reading", read)

    async def put_many(self, key: str, model: str, samples: Mapping[int, CachedSample]) -> None:
        """Store ``samples`` (index -> sample) under ``key``. Existing ``(key, index)`` rows are
        kept unchanged (first writer wins, no error); failed candidates are skipped."""
        kept = sorted((i, s) for i, s in samples.items() if s.candidate.error is None)
        if not kept:
            return

        def write(engine: Engine) -> None:
            # Rows in index order: concurrent writers of one key lock rows in the same order,
            # so PostgreSQL cannot deadlock on them.
            rows = [
                {
                    "key": key,
                    "sample_index": int(index),
                    "model": model,
                    "candidate": _dump(sample.candidate),
                    "prompt_tokens": int(sample.prompt_tokens),
                }
                for index, sample in kept
            ]
            _insert_ignoring_conflicts(engine, rows)

        await self._run("writing", write)

    async def stats(self) -> dict[str, int]:
        """``{"entries": stored samples, "keys": distinct keys}``."""

        def count(engine: Engine) -> dict[str, int]:
            with engine.connect() as conn:
                entries, keys = conn.execute(
                    select(func.count(), func.count(distinct(Completion.key)))
                ).one()
            return {"entries": int(entries), "keys": int(keys)}

        return await self._run("reading", count)

    async def clear(self) -> int:
        """Delete every cached sample; returns how many were deleted."""

        def wipe(engine: Engine) -> int:
            with write_transaction(engine) as conn:
                return int(conn.execute(delete(table("completions"))).rowcount or 0)

        return await self._run("clearing", wipe)

    # -- internals ---------------------------------------------------------------------------

    def _parse(self, raw: str, key: str, index: int) -> Candidate:
        try:
            return _load(raw)
        except (ValueError, ValidationError) as exc:
            raise StoreError(
                f"the cached sample {key}/{index} in {self.masked_url!r} is unreadable ({exc}). "
                "Fix: clear the cache (CompletionCache.clear())",
                url=self.masked_url,
            ) from exc


def _insert_ignoring_conflicts(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``completions``, skipping those whose primary key already exists."""
    completions = table("completions")
    dialect = engine.dialect.name
    if dialect in ("sqlite", "postgresql"):
        dialect_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        statement = dialect_insert(completions).on_conflict_do_nothing(
            index_elements=["key", "sample_index"]
        )
        with write_transaction(engine) as conn:
            conn.execute(statement, rows)
        return
    for row in rows:  # other dialects: one transaction per row, a duplicate is not an error
        try:
            with write_transaction(engine) as conn:
                conn.execute(insert(completions), row)
        except IntegrityError:
            continue
