"""Schemathesis against a real ``ttc serve`` process with auth required and the caps on.

Every operation of the service's OpenAPI schema (the same schema, request examples and body
hook as ``tests/api/test_fuzz.py``) is fuzzed over HTTP with a valid API key; the runs named by
the path examples are seeded in the store first, owned by that key. Nothing a client can send
may be answered with a 5xx (``not_a_server_error``), and every answer must match the schema.
The backends are FakeBackends; the caps are the service's defaults, so oversized, deep or
greedy requests meet the real limits (413, 400, 403, 429), never a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from orchestrator.api.protocol import ReasonRequest
from orchestrator.store.keys import KeyStore
from orchestrator.store.run_store import RunStore
from tests.api.server_process import ServerProcess
from tests.api.test_fuzz import CHECKS, CONFIG, FAILED, QUESTION, SUCCEEDED, _app, _with_examples
from tests.security.conftest import OLD, start, store_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(OLD, reason="fuzzes this tree's schema and settings"),
]

schema = schemathesis.openapi.from_dict(_with_examples(_app("sqlite://").openapi()), config=CONFIG)


async def _seed(store_url: str) -> str:
    """A key, and the runs the path examples name, owned by it; returns the key."""
    async with KeyStore(store_url) as keys, RunStore(store_url) as runs:
        key, plaintext = await keys.create("fuzzer")
        request = ReasonRequest(problem=QUESTION, strategy="single").model_dump(mode="json")
        for run_id in (SUCCEEDED, FAILED):
            await runs.create(run_id, request, key_id=key.id)
        await runs.finish(SUCCEEDED, "succeeded", result=None, usage={})
        error = {"message": "no answer", "type": "backend_error", "code": "backend_error"}
        await runs.finish(FAILED, "failed", usage={}, error=error)
    return plaintext


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    directory: Path = tmp_path_factory.mktemp("fuzz-real")
    key = asyncio.run(_seed(store_of(directory)))
    limits = {"default_strategy": {"strategy": "self_consistency", "n": 2},
              "max_concurrent_runs": 8, "max_queued_runs": 8}  # fmt: skip
    local_only = "default: local\nbackends:\n  local:\n    kind: fake\n"  # /readyz: ready
    with start(directory, limits, name="fuzzed", backends=local_only) as server:
        yield server, key


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_real_service_conforms_and_never_fails_with_5xx(
    case: schemathesis.Case, served: tuple[ServerProcess, str]
) -> None:
    server, key = served
    case.call_and_validate(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS
    )
