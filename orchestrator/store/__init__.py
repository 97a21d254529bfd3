"""The persistent store: one database (SQLite file by default, or PostgreSQL) for ttc's state.

* ``db``: URLs (:func:`normalize_url`, :data:`DEFAULT_URL`), :func:`make_engine`, the tables and
  the versioned :func:`migrate`.
* ``base``: :class:`StoreClient`, the engine lifecycle and lock retries every store object shares.
* ``cache``: :class:`CompletionCache`, sampled candidates keyed by :func:`cache_key` and the
  sample index.
* ``runs``: :class:`RunStore`, the service's runs (:class:`RunRecord`): request, status, result
  with its trace, usage, error; interrupted runs are failed on restart.
* ``keys``: :class:`KeyStore`, hashed API keys (:class:`ApiKey`) and their tokens per UTC day.

Every failure surfaces as ``orchestrator.errors.StoreError`` naming the URL (password masked).
"""

from orchestrator.store.base import StoreClient
from orchestrator.store.cache import CachedSample, CompletionCache, cache_key
from orchestrator.store.db import DEFAULT_URL, default_url, make_engine, migrate, normalize_url
from orchestrator.store.keys import ApiKey, KeyStore
from orchestrator.store.run_store import RunRecord, RunStatus, RunStore

__all__ = [
    "DEFAULT_URL",
    "ApiKey",
    "CachedSample",
    "CompletionCache",
    "KeyStore",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "StoreClient",
    "cache_key",
    "default_url",
    "make_engine",
    "migrate",
    "normalize_url",
]
