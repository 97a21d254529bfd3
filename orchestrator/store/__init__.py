"""The persistent store: one database (SQLite file by default, or PostgreSQL) for ttc's state.

* ``db``: URLs (:func:`normalize_url`, :data:`DEFAULT_URL`), :func:`make_engine`, the tables and
  the versioned :func:`migrate`.
* ``cache``: :class:`CompletionCache`, sampled candidates keyed by :func:`cache_key` and the
  sample index.

Every failure surfaces as ``orchestrator.errors.StoreError`` naming the URL (password masked).
"""

from orchestrator.store.cache import CachedSample, CompletionCache, cache_key
from orchestrator.store.db import DEFAULT_URL, default_url, make_engine, migrate, normalize_url

__all__ = [
    "DEFAULT_URL",
    "CachedSample",
    "CompletionCache",
    "cache_key",
    "default_url",
    "make_engine",
    "migrate",
    "normalize_url",
]
