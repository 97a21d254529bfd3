"""Typed views of the service's answers, and the request body the SDK sends.

The models accept fields they do not know (``extra="allow"``: kept in ``model_extra``), so an
older SDK keeps working against a newer server. ``Result`` and ``Usage`` are the library's own
``orchestrator.types`` models: a remote run parses into exactly what ``Orchestrator.run`` returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from orchestrator.sdk.errors import TTCAPIError
from orchestrator.types import Result, Usage

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
"""Run statuses after which nothing changes."""
TERMINAL_EVENTS = frozenset({"result", "error"})
"""Event types after which a run's event stream ends."""

_OPEN = ConfigDict(extra="allow", populate_by_name=True)
_RUN_ID = AliasChoices("run_id", "id")


class RunError(BaseModel):
    """Why a run failed or was cancelled: ``type`` is e.g. ``backend_error``, ``interrupted``."""

    model_config = _OPEN

    message: str = ""
    type: str = ""
    code: str | None = None


class RunResult(BaseModel):
    """The answer of ``reason``: a succeeded run with its full ``Result`` (trace included
    unless ``include_trace=False`` was asked) and its ``Usage``."""

    model_config = _OPEN

    run_id: str = Field(validation_alias=_RUN_ID)
    status: str = "succeeded"
    result: Result
    usage: Usage = Field(default_factory=Usage)

    @model_validator(mode="before")
    @classmethod
    def _usage_from_result(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("usage") is None:
            result = data.get("result")
            if isinstance(result, dict) and result.get("usage") is not None:
                return {**data, "usage": result["usage"]}
        return data

    @property
    def answer(self) -> str | None:
        """The final answer (``result.answer``)."""
        return self.result.answer


class RunInfo(BaseModel):
    """A run's record (``GET /v1/runs/{id}``): status, timestamps, request, result, error."""

    model_config = _OPEN

    id: str = Field(validation_alias=AliasChoices("id", "run_id"))
    status: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any] | None = None
    result: Result | None = None
    usage: Usage | None = None
    error: RunError | None = None
    key_id: str | None = None

    @property
    def done(self) -> bool:
        """True once the run succeeded, failed or was cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def answer(self) -> str | None:
        """The final answer, or None while running / after a failure."""
        return self.result.answer if self.result else None


class RunEvent(BaseModel):
    """One event of a run: ``type`` is ``status``, ``progress``, ``result`` or ``error``.

    ``progress`` data describes a finished span (name, kind, tokens, seconds); ``status`` data
    has the new status; ``result`` / ``error`` end the stream.
    """

    model_config = _OPEN

    run_id: str
    seq: int
    type: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True for the run's last event (result or error)."""
        return self.type in TERMINAL_EVENTS

    @classmethod
    def from_sse(
        cls, run_id: str, event: str, data: str, event_id: str | None, index: int
    ) -> RunEvent:
        """Parse one SSE event whose data is a RunEvent (``{"type", "data", "seq"?}``) or just
        its ``data`` object (then the SSE ``event`` field is the type).

        ``seq`` comes from the payload, else from a numeric SSE ``id``, else ``index``.
        """
        try:
            payload = json.loads(data) if data.strip() else {}
        except ValueError as exc:
            raise TTCAPIError(
                f"event {event!r} of run {run_id} carries data that is not JSON: {data[:200]!r}",
                type="invalid_response",
            ) from exc
        seq = int(event_id) if event_id is not None and event_id.isdigit() else index
        if (
            isinstance(payload, dict)
            and "type" in payload
            and isinstance(payload.get("data"), dict)
        ):
            return cls.model_validate({"run_id": run_id, "seq": seq, **payload})
        body = payload if isinstance(payload, dict) else {"value": payload}
        return cls(run_id=run_id, seq=seq, type=event, data=body)


class VerifierInfo(BaseModel):
    """A registered verifier: its config's JSON schema and the capabilities (e.g. ``logprobs``)
    the backend must offer."""

    model_config = _OPEN

    name: str
    description: str = ""
    config_schema: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("config_schema", "schema")
    )
    requires: list[str] = Field(default_factory=list)


class StrategyInfo(VerifierInfo):
    """A registered strategy (``kind="strategy"``) or a named config of one (``kind="config"``,
    with its ``spec``): config JSON schema and needed backend capabilities."""

    kind: str = "strategy"
    spec: dict[str, Any] | None = None


def jsonable(value: Any) -> Any:
    """A pydantic model as JSON-ready data (None fields left out); mappings as dicts."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def reason_body(
    problem: Any,
    strategy: str | Mapping[str, Any] | None,
    budget: Any,
    backend: str | None,
    model: str | None,
    seed: int | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The ReasonRequest JSON; fields left as None are omitted so server defaults apply."""
    body: dict[str, Any] = {"problem": jsonable(problem)}
    fields = {"strategy": strategy, "budget": budget, "backend": backend, "model": model}
    body.update({k: jsonable(v) for k, v in fields.items() if v is not None})
    if seed is not None:
        body["seed"] = seed
    if options:
        body["options"] = dict(options)
    return body


def list_items(data: Any, key: str) -> list[Any]:
    """The items of a list answer: a bare list, ``{"data": [...]}`` or ``{key: [...]}``."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for k in ("data", key):
            if isinstance(data.get(k), list):
                return list(data[k])
    raise TTCAPIError(f"expected a list of {key}, got {str(data)[:200]!r}", type="invalid_response")
