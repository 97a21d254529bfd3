"""The native ttc API: reasoning runs, their events, the registries, health and metrics.

Routes (all but ``/healthz`` and ``/readyz`` go through ``require_key``):

* ``POST /v1/reason``: run a ReasonRequest to the end and answer ``{"run_id", "status",
  "result", "usage"}``, the Result with candidates, scores and the trace (unless
  ``options.include_trace`` is false; token logprobs only with ``options.include_logprobs``).
  A client that disconnects cancels the run. A failed run answers with the error body and the
  status of its cause (``errors.status_for_error``: 502/503/504 backend, 503 store, ...); a run
  cancelled meanwhile by ``DELETE`` answers 409 ``run_cancelled``, by shutdown 503.
* ``POST /v1/reason?async=true`` and ``POST /v1/runs``: start a background run, 202
  ``{"run_id", "status": "queued", "links"}`` with a ``Location`` header. Disconnecting does not
  cancel it.
* ``GET /v1/runs/{run_id}``: the RunRecord (result presented as above). 404 when unknown.
* ``GET /v1/runs/{run_id}/events``: server-sent events ``id: <seq>``, ``event: <type>``,
  ``data: <RunEvent JSON>``; a live run's past events are replayed, then followed; the stream
  ends after the ``result`` or ``error`` event. ``Last-Event-ID`` skips events already seen.
  A comment line is sent every ``run_views.HEARTBEAT_SECONDS`` while idle.
* ``DELETE /v1/runs/{run_id}``: cancel; answers 200 with the run's final record. Idempotent:
  a run that already finished is returned unchanged (status tells what happened).
* ``GET /v1/runs?limit=&status=``: newest first, records without their results.
* ``GET /v1/strategies`` and ``GET /v1/verifiers``: registered names, descriptions, config JSON
  schemas and needed backend capabilities; strategies also list the named configs of
  ``configs/strategies/`` (``kind: "config"``).
* ``GET /healthz``: 200 ``{"status": "ok"}`` while the process serves requests.
* ``GET /readyz``: 200 when the service started and every backend is ready (openai kind: the
  server answers ``GET /models`` within ``READY_TIMEOUT``; vllm kind: the engine is started and
  healthy; in-process kinds: always) and the run store answers; else 503 with an ``error``
  object. The probe is cached (``readyz_cache_seconds``); only a caller with a valid key (or
  anyone with auth off) gets the per-check detail, others ``{"status"}`` alone.
* ``GET /metrics``: the Prometheus exposition of ``app.state.metrics``; needs a key like the
  rest when keys are configured.

With ``auth: required`` a run belongs to the key that created it: other keys get 404 for it
(read, events, cancel) and do not see it in lists; runs created while auth was off belong to
no key and are visible to none. Requests are checked against the service's policy
(``orchestrator.api.policy``) before a run is created: 403 for a privileged field, 400 above a
cap, 429 when the queue or the key's limits are full.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from orchestrator.api.auth import may_see_details, require_key
from orchestrator.api.disconnect import CLIENT_GONE, ClientDisconnected, until_disconnect
from orchestrator.api.errors import (
    ERROR_RESPONSES,
    APIError,
    ErrorResponse,
    api_error_from,
    not_found,
)
from orchestrator.api.protocol import ReasonRequest
from orchestrator.api.run_views import (
    ReasonAnswer,
    RunCreated,
    RunList,
    present_record,
    present_result,
    run_options,
    sse_stream,
)
from orchestrator.api.service_info import Readiness, strategy_infos, verifier_infos
from orchestrator.store.keys import ApiKey
from orchestrator.store.run_store import RunRecord, RunStatus

if TYPE_CHECKING:
    from orchestrator.api.runs import RunManager

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0
Key = Annotated[ApiKey | None, Depends(require_key)]

router = APIRouter(responses=ERROR_RESPONSES)
_CREATED: dict[int | str, dict[str, Any]] = {202: {"model": RunCreated, "description": "started"}}
_RECORD: dict[int | str, dict[str, Any]] = {200: {"model": RunRecord, "description": "the run"}}


def _links(run_id: str) -> dict[str, str]:
    base = f"/v1/runs/{run_id}"
    return {"self": base, "events": f"{base}/events", "cancel": base}


# -- errors ------------------------------------------------------------------------------------


def _raise_unless_succeeded(record: RunRecord, shutting_down: bool) -> None:
    """Answer a run that did not succeed with the error of its cause (see the module doc)."""
    if record.status == "succeeded":
        return
    error = record.error or {}
    if record.status == "cancelled":
        message = str(error.get("message") or f"run {record.id} was cancelled")
        if shutting_down:
            raise APIError(503, message, type="service_unavailable", code="shutting_down")
        raise APIError(409, message, code="run_cancelled")
    raise api_error_from(error or {"message": f"run {record.id} ended as {record.status}"})


# -- state access ------------------------------------------------------------------------------


def _runs(request: Request) -> RunManager:
    runs: RunManager | None = getattr(request.app.state, "runs", None)
    if runs is None:
        raise APIError(
            503, "the service is not started yet", type="service_unavailable", code="not_started"
        )
    return runs


def _visible(record: RunRecord | None, key: ApiKey | None) -> bool:
    """A key sees only its own runs (not those of other keys, nor those created while auth
    was off); with auth off (no key) every run is visible."""
    return record is not None and (key is None or record.key_id == key.id)


async def _visible_record(request: Request, run_id: str, key: ApiKey | None) -> RunRecord:
    record = await _runs(request).get(run_id)
    if record is None or not _visible(record, key):
        raise not_found("run", run_id)
    return record


# -- runs --------------------------------------------------------------------------------------


def _checked(request: Request, body: ReasonRequest, key: ApiKey | None) -> RunManager:
    """The RunManager, once ``body`` passed the service's policy (403 / 400 otherwise)."""
    runs = _runs(request)
    runs.policy.check_reason(body, key, request.app.state.orch)
    return runs


async def _submit(request: Request, body: ReasonRequest, key: ApiKey | None) -> JSONResponse:
    run_id = await _checked(request, body, key).submit(body, key=key)
    links = _links(run_id)
    return JSONResponse(
        {"run_id": run_id, "status": "queued", "links": links},
        status_code=202,
        headers={"Location": links["self"]},
    )


@router.post(
    "/v1/reason",
    tags=["runs"],
    summary="Solve a problem (synchronously by default)",
    responses={
        200: {"model": ReasonAnswer, "description": "the finished run"},
        409: {"model": ErrorResponse, "description": "the run was cancelled meanwhile"},
        **_CREATED,
    },
)
async def reason(
    request: Request,
    body: ReasonRequest,
    key: Key,
    run_async: Annotated[bool, Query(alias="async")] = False,
) -> Any:
    """Run ``body`` and answer with the full Result; ``?async=true`` answers 202 at once."""
    if run_async:
        return await _submit(request, body, key)
    runs = _checked(request, body, key)
    try:
        record = await until_disconnect(request, runs.run(body, key=key))
    except ClientDisconnected:
        return Response(status_code=CLIENT_GONE)
    _raise_unless_succeeded(record, runs.closing)
    result = present_result(record.result, body.options)
    return {"run_id": record.id, "status": record.status, "result": result, "usage": record.usage}


@router.post("/v1/runs", status_code=202, tags=["runs"], summary="Start a run", responses=_CREATED)
async def create_run(request: Request, body: ReasonRequest, key: Key) -> Any:
    """Start ``body`` in the background: 202 with the run id and links."""
    return await _submit(request, body, key)


@router.get(
    "/v1/runs",
    tags=["runs"],
    summary="List runs, newest first",
    responses={200: {"model": RunList, "description": "the runs"}},
)
async def list_runs(
    request: Request,
    key: Key,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: RunStatus | None = None,
) -> dict[str, Any]:
    """Runs newest first, without results (fetch one run for its result)."""
    store = getattr(request.app.state, "run_store", None)
    if store is None:
        raise APIError(
            503, "the service is not started yet", type="service_unavailable", code="not_started"
        )
    owners = None if key is None else {key.id}
    records = await store.list(limit=limit, status=status, include_result=False, key_ids=owners)
    data = [present_record(r, with_result=False) for r in records]
    return {"object": "list", "data": data}


@router.get("/v1/runs/{run_id}", tags=["runs"], summary="A run", responses=_RECORD)
async def get_run(request: Request, run_id: str, key: Key) -> dict[str, Any]:
    """The run's record; 404 when unknown."""
    return present_record(await _visible_record(request, run_id, key))


@router.delete("/v1/runs/{run_id}", tags=["runs"], summary="Cancel a run", responses=_RECORD)
async def cancel_run(request: Request, run_id: str, key: Key) -> dict[str, Any]:
    """Cancel the run; its final record (unchanged when it had finished already)."""
    await _visible_record(request, run_id, key)
    record = await _runs(request).cancel(run_id)
    if record is None:
        raise not_found("run", run_id)
    return present_record(record)


@router.get(
    "/v1/runs/{run_id}/events",
    tags=["runs"],
    summary="Follow a run's events (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"}},
)
async def run_events(
    request: Request,
    run_id: str,
    key: Key,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The run's events as ``text/event-stream``; 404 when unknown."""
    record = await _visible_record(request, run_id, key)
    after = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else -1
    stream = sse_stream(_runs(request).events(run_id), run_options(record), after)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


# -- registries --------------------------------------------------------------------------------


@router.get("/v1/strategies", tags=["registry"], summary="Registered strategies")
async def list_strategies(request: Request, key: Key) -> dict[str, Any]:
    """Names, descriptions, config JSON schemas and needed backend capabilities."""
    catalog = request.app.state.settings.catalog()
    return {"object": "list", "data": await strategy_infos(catalog)}


@router.get("/v1/verifiers", tags=["registry"], summary="Registered verifiers")
async def list_verifiers(key: Key) -> dict[str, Any]:
    """Names, descriptions, config JSON schemas and what the sampling backend must offer."""
    return {"object": "list", "data": verifier_infos()}


# -- health, readiness, metrics ----------------------------------------------------------------


@router.get("/healthz", tags=["health"], summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Readiness: backends and store reachable")
async def readyz(request: Request) -> JSONResponse:
    """200 when every backend and the store are ready, else 503 (from a cached probe). Only a
    caller with a valid API key (or any caller with auth off) gets the per-check detail."""
    state = request.app.state
    orch, runs = getattr(state, "orch", None), getattr(state, "runs", None)
    service = "ready"
    if orch is None or runs is None:
        service = "not started"
    elif getattr(runs, "closing", False):
        service = "shutting down"
    backends = dict(orch.backends) if orch is not None else {}
    checks = await _readiness(state).checks(backends, getattr(state, "run_store", None))
    failing = [f"backend {n!r}: {c['detail']}" for n, c in checks["backends"].items()
               if not c["ready"]]  # fmt: skip
    if not checks["store"]["ready"]:
        failing.append(f"store: {checks['store']['detail']}")
    if service != "ready":
        failing.insert(0, f"service: {service}")
    status = "ready" if not failing else "unavailable"
    body: dict[str, Any] = {"status": status}
    if await may_see_details(request):
        body.update(service=service, **checks)
        message = "not ready: " + "; ".join(failing)
    else:
        message = "not ready"
    if not failing:
        return JSONResponse(body)
    error = APIError(503, message, type="service_unavailable", code="not_ready")
    return JSONResponse({**body, **error.body()}, status_code=503,
                        headers={"x-should-retry": "true"})  # fmt: skip


def _readiness(state: Any) -> Readiness:
    readiness = getattr(state, "readiness", None)
    if not isinstance(readiness, Readiness):
        settings = getattr(state, "settings", None)
        ttl = settings.readyz_cache_seconds if settings is not None else 5.0
        readiness = Readiness(ttl, READY_TIMEOUT)
        state.readiness = readiness
    return readiness


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request, key: Key) -> Response:
    """The Prometheus exposition of the service's metrics."""
    service_metrics = getattr(request.app.state, "metrics", None)
    if service_metrics is None:
        raise APIError(404, "metrics are not enabled in this app", type="not_found_error")
    content, content_type = service_metrics.render()
    return Response(content, media_type=content_type)
