"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models[/{model}]``.

Point any OpenAI client at the service and pick a strategy with the model name
``<strategy-or-config>:<backend-or-model>`` (``self_consistency:local``; a part after ``:`` that
is not a backend is a model override for the default backend), a plain backend name (the
default strategy), or a plain strategy name (the default backend). The extra body field ``ttc``
(``{"strategy": ..., "config": {...}, "budget": {...}, <config field>: value, ...}``, see
``TTCOptions``) overrides the strategy and its config. Spec precedence, lowest first: the
strategy's defaults (or named config), the standard fields ``temperature``, ``top_p``,
``max_tokens`` / ``max_completion_tokens`` and ``stop`` (when the strategy has such fields;
otherwise ignored with a debug log), config fields at the top of ``ttc``, then ``ttc.config``.
How messages become a problem, ``n`` runs and the response: see ``orchestrator.api.chat``.

``stream: true``: SSE. While the runs are in flight each trace span that closes is sent as a
comment line ``: progress {json}`` (standard clients ignore comments; with
``ttc.progress = "chunks"`` also as chunks with an empty delta and a ``ttc_progress`` field),
and ``: keep-alive`` every ``KEEPALIVE_SECONDS`` of silence; then a chunk per choice with the
whole content, a chunk per choice with its ``finish_reason``, a usage chunk (``choices: []``)
when ``stream_options.include_usage``, and ``data: [DONE]``. The last chunk carries ``ttc``.
If any of the ``n`` runs fails, the request fails with that run's error and status (bad request
400, backend 502/503/504, cancelled 409, ...); after the stream began, it ends with
``data: {"error": {...}}`` instead (OpenAI clients raise it). A client that disconnects
(streaming or not) cancels its runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from orchestrator.api.auth import require_key
from orchestrator.api.chat import (
    ClientTrust,
    build_requests,
    choice_of,
    parse_model,
    ttc_object,
    usage_total,
)
from orchestrator.api.disconnect import CLIENT_GONE, ClientDisconnected, until_disconnect
from orchestrator.api.errors import ERROR_RESPONSES, APIError, api_error_from
from orchestrator.api.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    ModelCard,
    ModelList,
    TTCOptions,
)
from orchestrator.api.runs import DISCONNECTED, RunEvent, RunManager
from orchestrator.errors import RegistryError
from orchestrator.runner import Orchestrator
from orchestrator.specs import resolve_spec
from orchestrator.store.keys import ApiKey
from orchestrator.store.run_store import RunRecord

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
STREAM_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event of a streamed completion (the schema describes each "
    "event, as OpenAPI 3.2's itemSchema does): its data is a chat.completion.chunk as JSON, an "
    "error body as JSON when a run fails after the stream began, or the text [DONE]. Progress "
    "comes as SSE comment lines (': progress {json}'), which are not events.",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
Key = Annotated[ApiKey | None, Depends(require_key)]
router = APIRouter(tags=["openai"], responses=ERROR_RESPONSES)


def _state(request: Request) -> tuple[Orchestrator, RunManager]:
    orch, runs = getattr(request.app.state, "orch", None), getattr(request.app.state, "runs", None)
    if orch is None or runs is None:
        raise APIError(503, "the service is not started yet", type="service_unavailable")
    return orch, runs


# -- models ------------------------------------------------------------------------------------


def _created(request: Request) -> int:
    return int(getattr(request.app.state, "started_at", 0) or time.time())


@router.get("/v1/models", response_model=ModelList, summary="Strategy x backend models")
async def list_models(request: Request, key: Key) -> ModelList:
    """Every backend (the default strategy on it), then ``<strategy-or-config>:<backend>``."""
    orch, _ = _state(request)
    names = request.app.state.settings.catalog().available()
    ids = list(orch.backends) + [f"{s}:{b}" for s in names for b in orch.backends]
    return ModelList(data=[ModelCard(id=i, created=_created(request)) for i in ids])


@router.get("/v1/models/{model:path}", response_model=ModelCard, summary="One model")
async def get_model(request: Request, model: str, key: Key) -> ModelCard:
    """The model if ``/v1/chat/completions`` accepts its name, else 404."""
    orch, _ = _state(request)
    catalog = request.app.state.settings.catalog()
    try:
        strategy, _, _ = parse_model(model, orch.backends, catalog)
        if strategy is not None:
            resolve_spec(strategy, catalog=catalog)
    except (APIError, RegistryError):
        raise APIError(
            404, f"unknown model {model!r}", type="not_found_error", code="model_not_found"
        ) from None
    return ModelCard(id=model, created=_created(request))


def _raise_failed(records: Sequence[RunRecord]) -> None:
    for rec in records:
        if rec.status != "succeeded":
            raise api_error_from(rec.error or {"message": f"run {rec.id} ended {rec.status}"})


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    summary="OpenAI-compatible chat completion answered by a strategy",
    responses={200: {"content": {"text/event-stream": {"schema": STREAM_EVENT_SCHEMA}}}},
)
async def chat_completions(request: Request, body: ChatCompletionRequest, key: Key) -> Any:
    """A ``chat.completion`` (or its SSE stream) answered by ``n`` strategy runs."""
    orch, runs = _state(request)
    settings = request.app.state.settings
    trust = ClientTrust(runs.policy, key, orch)
    spec, reqs = build_requests(
        body,
        orch.backends,
        settings.default_strategy,
        settings.max_request_n,
        settings.catalog(),
        trust,
    )
    created = int(time.time())
    if body.stream:
        ids: list[str] = []
        follow: list[AsyncIterator[RunEvent]] = []
        try:
            for req in reqs:  # follow each run from its first event, before it can finish
                ids.append(await runs.submit(req, key=key))
                follow.append(runs.events(ids[-1]))
        except BaseException:
            for run_id in ids:
                runs.request_cancel(run_id, "the request failed before its stream began")
            raise
        stream = _stream(runs, ids, follow, body, spec, created)
        return _RunStream(stream, lambda: [runs.request_cancel(i, DISCONNECTED) for i in ids])
    try:
        records = await until_disconnect(request, runs.run_many(reqs, key=key))
    except ClientDisconnected:
        return Response(status_code=CLIENT_GONE)
    _raise_failed(records)
    choices = []
    for i, rec in enumerate(records):
        content, finish = choice_of(rec)
        message = {"role": "assistant", "content": content}
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
    return JSONResponse(
        {
            "id": f"chatcmpl-{records[0].id}",
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": usage_total(records),
            "system_fingerprint": None,
            "ttc": ttc_object(spec, records),
        }
    )


# -- streaming ---------------------------------------------------------------------------------


class _RunStream(StreamingResponse):
    """An SSE response that calls ``on_close`` when it ends for any reason (finished,
    client gone, error), so runs still in flight are cancelled."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], object]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(data: Mapping[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n"


async def _stream(
    runs: RunManager,
    ids: list[str],
    follow: list[AsyncIterator[RunEvent]],
    body: ChatCompletionRequest,
    spec: dict[str, Any],
    created: int,
) -> AsyncIterator[str]:
    """The SSE body (see the module docstring)."""
    chunks = (body.ttc or TTCOptions()).progress == "chunks"

    def chunk(choices: list[ChunkChoice], **extra: Any) -> str:
        model = ChatCompletionChunk(
            id=f"chatcmpl-{ids[0]}",
            object="chat.completion.chunk",
            created=created,
            model=body.model,
            system_fingerprint=None,
            choices=choices,
            **extra,
        )
        return _sse(model.model_dump(mode="json", exclude_unset=True))

    def delta(i: int, finish: FinishReason | None = None, **fields: Any) -> ChunkChoice:
        return ChunkChoice(index=i, delta=ChunkDelta(**fields), finish_reason=finish, logprobs=None)

    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, events: AsyncIterator[RunEvent]) -> None:
        try:
            async for event in events:
                queue.put_nowait((i, event))
        except Exception:
            log.exception("following run %s failed", ids[i])
        finally:
            queue.put_nowait((i, None))

    pumps = [asyncio.ensure_future(pump(i, events)) for i, events in enumerate(follow)]
    try:
        yield chunk([delta(i, role="assistant", content="") for i in range(len(ids))])
        remaining = len(ids)
        while remaining:
            try:
                i, event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:
                remaining -= 1
            elif event.type in ("progress", "status"):
                progress = {"choice": i, "run_id": event.run_id, "type": event.type, **event.data}
                yield f": progress {json.dumps(progress, separators=(',', ':'))}\n\n"
                if chunks:
                    yield chunk([delta(i)], ttc_progress=progress)
        records = [await runs.wait(run_id) for run_id in ids]
        try:
            _raise_failed(records)
        except APIError as exc:
            yield _sse(exc.body())
            yield _sse("[DONE]")
            return
        ttc = ttc_object(spec, records)
        for i, rec in enumerate(records):
            yield chunk([delta(i, content=choice_of(rec)[0])])
        last = len(records) - 1
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        for i, rec in enumerate(records):
            extra = {"ttc": ttc} if i == last and not include_usage else {}
            yield chunk([delta(i, finish=choice_of(rec)[1])], **extra)
        if include_usage:
            yield chunk([], usage=usage_total(records), ttc=ttc)
        yield _sse("[DONE]")
    finally:
        for task in pumps:
            task.cancel()
