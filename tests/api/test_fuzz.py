"""Schema fuzzing: schemathesis drives every operation of the service's own OpenAPI schema.

The schema is the app's ``app.openapi()``; each operation is tested on a fresh app
(``create_app`` over ``FakeBackend("local")``, SQLite store in ``tmp_path``) called in process
through schemathesis' ASGI transport, which starts the app's lifespan on the first request and
ends it when the test ends. Schemathesis generates valid and invalid requests (bodies, query
strings, path parameters, headers, unsupported methods) and every response must:

* not be a 5xx (``not_a_server_error``): nothing a client can send crashes the service;
* have a status the schema documents for the operation (``status_code_conformance``);
* have a documented content type (``content_type_conformance``);
* match the documented body schema of its status (``response_schema_conformance``), error
  bodies included; the JSON inside server-sent events, which the schema can only type as
  strings, is checked against the models (``stream_payloads_conform``).

Random data rarely gets past validation (a random model name is unknown, a random run id does
not exist), so the success paths are reached too: the schema used here gains request examples
(valid chat completions, streamed or not, and reasoning requests) and examples for the path
parameters (runs seeded in the store before the app starts: succeeded, failed, interrupted by a
restart), and a hook gives half of the generated chat completion bodies a valid model and a
final user question while keeping their other fields random. The app's own schema is not
changed by any of this.

Deterministic (fixed seed, derandomized Hypothesis, no example database) and bounded
(``MAX_EXAMPLES`` per operation plus the examples and boundary-value phases).
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.api import create_app
from orchestrator.api.errors import ErrorResponse
from orchestrator.api.protocol import ChatCompletionChunk, ReasonRequest, RunEvent
from orchestrator.api.settings import ServiceSettings
from orchestrator.runner import Orchestrator
from orchestrator.specs import result_json
from orchestrator.store.run_store import RunStore
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.types import Usage

MAX_EXAMPLES = 25
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240601,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "max-stream-events": 10_000,  # read event streams to their end
    }
)

SUCCEEDED, FAILED, INTERRUPTED = "fuzz-succeeded", "fuzz-failed", "fuzz-interrupted"
QUESTION = "What is 6 * 7?"
VALID_MODELS = ["local", "self_consistency", "self_consistency:local", "best_of_n:local"]


def _sse_data(text: str) -> list[str]:
    """The ``data`` of each event of an SSE body (comment lines are not events)."""
    out = []
    for block in text.split("\n\n"):
        lines = [
            line.removeprefix("data:") for line in block.splitlines() if line.startswith("data:")
        ]
        if lines:
            out.append("\n".join(line.removeprefix(" ") for line in lines))
    return out


def stream_payloads_conform(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """The JSON inside server-sent events, which the schema types as strings, against the
    models: a chat stream is ``chat.completion.chunk`` objects (or an error body) ending with
    ``[DONE]``; a run's event stream is RunEvents."""
    content_type = ";".join(response.headers.get("content-type", []))
    if response.status_code != 200 or "text/event-stream" not in content_type:
        return
    data = _sse_data(response.content.decode())
    try:
        if case.operation.path == "/v1/chat/completions":
            assert data, "an empty completion stream"
            if not response.stream_cut_short:
                assert data[-1] == "[DONE]", f"the stream ends with {data[-1]!r}, not [DONE]"
                data = data[:-1]
            for item in data:
                payload = json.loads(item)
                model = ErrorResponse if "error" in payload else ChatCompletionChunk
                model.model_validate(payload)
        elif case.operation.path == "/v1/runs/{run_id}/events":
            for item in data:
                RunEvent.model_validate_json(item)
    except (ValueError, TypeError, ValidationError) as exc:  # bad JSON or a model mismatch
        raise AssertionError(f"server-sent event payload: {exc}") from None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    stream_payloads_conform,
]


def _app(store_url: str) -> FastAPI:
    settings = ServiceSettings(
        store_url=store_url,
        shutdown_grace_seconds=0.5,
        auth="off",
        default_strategy={"strategy": "self_consistency", "n": 2},
    )
    return create_app(settings, orchestrator=Orchestrator([FakeBackend(name="local")]))


# -- the schema, with examples that reach the success paths -------------------------------------

CHAT_EXAMPLES = {
    "plain": {
        "model": "self_consistency:local",
        "messages": [{"role": "user", "content": QUESTION}],
    },
    "system_and_ttc": {
        "model": "local",
        "messages": [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
        "n": 2,
        "seed": 1,
        "temperature": 0.5,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "ttc": {"n": 3, "budget": {"max_calls": 2}, "answer_format": "number"},
    },
    "stream": {
        "model": "self_consistency:local",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "ttc": {"progress": "chunks"},
    },
}
REASON_EXAMPLES = {
    "question": {"problem": QUESTION},
    "full": {
        "problem": {"question": QUESTION, "answer_format": "number"},
        "strategy": {"strategy": "best_of_n", "n": 2},
        "budget": {"max_calls": 4},
        "backend": "local",
        "seed": 3,
        "options": {"include_trace": False},
    },
}
PATH_EXAMPLES = {
    "run_id": [SUCCEEDED, FAILED, INTERRUPTED, "no-such-run"],
    "model": ["self_consistency:local", "local", "nope"],
}


def _with_examples(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with the request examples above on the operations that take them."""
    openapi = copy.deepcopy(openapi)
    bodies = {
        ("/v1/chat/completions", "post"): CHAT_EXAMPLES,
        ("/v1/reason", "post"): REASON_EXAMPLES,
        ("/v1/runs", "post"): REASON_EXAMPLES,
    }
    for (path, method), examples in bodies.items():
        media = openapi["paths"][path][method]["requestBody"]["content"]["application/json"]
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    for item in openapi["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                values = PATH_EXAMPLES.get(param["name"]) if param["in"] == "path" else None
                if values:
                    param["examples"] = {str(i): {"value": v} for i, v in enumerate(values)}
    return openapi


# ``app.openapi()`` needs no lifespan: nothing is opened to build the schema.
schema = schemathesis.openapi.from_dict(_with_examples(_app("sqlite://").openapi()), config=CONFIG)


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Half of the chat completion bodies get a valid model and end with a user question."""
    operation = context.operation
    if operation is None or operation.path != "/v1/chat/completions":
        return st.just(body)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return st.just(body)
    user = {"role": "user", "content": QUESTION}
    steered = st.sampled_from(VALID_MODELS).map(
        lambda model: {**body, "model": model, "messages": [*body["messages"], user]}
    )
    return st.one_of(st.just(body), steered)


# -- the app under test -------------------------------------------------------------------------


async def _seed_runs(store_url: str) -> None:
    """Store the runs the path examples name: one that succeeded (a real result on the
    FakeBackend), one that failed on its backend, and one left queued, which the app's start
    reports as failed (interrupted by the restart)."""
    request = ReasonRequest(problem=QUESTION, strategy={"strategy": "self_consistency", "n": 2})
    orch = Orchestrator([FakeBackend(name="local")])
    try:
        result = await orch.run(request.as_problem(), {"strategy": "self_consistency", "n": 2})
    finally:
        await orch.aclose()
    result = result.model_copy(update={"run_id": SUCCEEDED})
    store = RunStore(store_url)
    await store.open()
    try:
        stored_request = request.model_dump(mode="json")
        for run_id in (SUCCEEDED, FAILED, INTERRUPTED):
            await store.create(run_id, stored_request)
        await store.mark_running(SUCCEEDED)
        await store.finish(
            SUCCEEDED,
            "succeeded",
            result=result_json(result, keep_logprobs=False),
            usage=result.usage.model_dump(mode="json"),
        )
        error = {"message": "no answer: every sample failed", "type": "backend_error",
                 "code": "backend_unavailable"}  # fmt: skip
        await store.finish(FAILED, "failed", usage=Usage().model_dump(mode="json"), error=error)
    finally:
        await store.aclose()


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """A fresh app per operation, on a SQLite store in ``tmp_path`` holding the seeded runs."""
    store_url = f"sqlite:///{tmp_path / 'ttc.db'}"
    asyncio.run(_seed_runs(store_url))
    return _app(store_url)


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # one app per operation
def test_api_conforms_to_its_schema(case: schemathesis.Case, app: FastAPI) -> None:
    case.call_and_validate(app=app, checks=CHECKS)
