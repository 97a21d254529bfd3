"""Prometheus metrics of the ttc service.

``ServiceMetrics`` owns its own ``CollectorRegistry`` (never the process-global one), so several
apps in one process (tests) keep separate counts and ``GET /metrics`` shows only the service's
series:

=============================================  ==================================================
``ttc_requests_total{route,method,status}``    HTTP requests by route *template*
                                               (``/v1/runs/{run_id}``, never the raw path;
                                               ``unmatched`` for paths no route serves)
``ttc_request_seconds{route}``                 request latency histogram (to the response's end,
                                               so an SSE stream counts its whole duration)
``ttc_runs_total{strategy,status}``            finished runs by final status
``ttc_run_seconds{strategy}``                  run wall time histogram
``ttc_tokens_total{backend,kind}``             tokens by backend; ``kind`` is ``prompt``,
                                               ``completion`` or ``cached`` (the part of the
                                               completion tokens served by the completion cache)
``ttc_budget_exhausted_total{strategy,limit}``  runs stopped by their budget, by the limit hit
``ttc_errors_total{type}``                     error *responses* by their ``error.type``
                                               (failed background runs show in ``ttc_runs_total``
                                               with ``status="failed"``)
``ttc_backend_faults_total{backend,kind}``     failed backend attempts by what the server did
                                               (``rate_limited``, ``unavailable``,
                                               ``server_error``, ``rejected``, ``timeout``,
                                               ``connection``, ``invalid_response``,
                                               ``short_n``), read from the backends' ``faults``
                                               counters when scraped (``watch_backends``)
=============================================  ==================================================

``MetricsMiddleware`` is a pure ASGI middleware (it does not buffer streaming bodies); it reads
the error type from the JSON body of responses with status >= 400, and counts an exception that
escapes the app as a 500 ``internal_error``. ``observe_run`` is called by the RunManager once per
finished run; tokens by backend come from the backend spans of the Result's trace.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.types import Result

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
UNMATCHED = "unmatched"
_ERROR_BODY_CAP = 64 * 1024  # error bodies are small; never buffer more than this
_LIMIT_IN_MESSAGE = re.compile(r"budget exhausted: (\w+)")


class ServiceMetrics:
    """The service's counters and histograms in a private registry (see the module docstring).

    All ``observe_*`` methods are synchronous, cheap and safe to call from the event loop.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ttc_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "ttc_request_seconds", "HTTP request latency in seconds by route template",
            ["route"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.runs = Counter(
            "ttc_runs", "Finished runs by strategy and final status",
            ["strategy", "status"], registry=r,
        )  # fmt: skip
        self.run_seconds = Histogram(
            "ttc_run_seconds", "Run wall time in seconds by strategy",
            ["strategy"], buckets=RUN_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "ttc_tokens", "Tokens by backend and kind (prompt, completion, cached)",
            ["backend", "kind"], registry=r,
        )  # fmt: skip
        self.budget_exhausted = Counter(
            "ttc_budget_exhausted", "Runs stopped by their budget, by strategy and limit",
            ["strategy", "limit"], registry=r,
        )  # fmt: skip
        self.errors = Counter("ttc_errors", "Error responses by error type", ["type"], registry=r)
        self._faults = _FaultCollector()
        r.register(self._faults)

    def watch_backends(self, built: Callable[[], Mapping[str, object]]) -> None:
        """Export the ``faults`` counters of the backends ``built()`` returns when scraped."""
        self._faults.sources.append(built)

    # -- observations -------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request (``route`` is the route template)."""
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def observe_error(self, error_type: str) -> None:
        """Count one error response of ``error_type`` (the body's ``error.type``)."""
        self.errors.labels(type=error_type or "unknown").inc()

    def observe_run(
        self,
        strategy: str,
        status: str,
        seconds: float,
        result: Result | Mapping[str, Any] | None,
    ) -> None:
        """Count a finished run: status, duration, tokens by backend, budget exhaustion.

        ``result`` is the run's Result (or its JSON dict); None for runs that produced none
        (failed, cancelled or interrupted before finishing).
        """
        self.runs.labels(strategy=strategy, status=status).inc()
        self.run_seconds.labels(strategy=strategy).observe(max(0.0, seconds))
        if result is None:
            return
        data = _as_dict(result)
        for backend, kind, tokens in token_counts(data):
            if tokens > 0:
                self.tokens.labels(backend=backend, kind=kind).inc(tokens)
        if data.get("budget_exhausted"):
            self.budget_exhausted.labels(strategy=strategy, limit=exhaustion_limit(data)).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of the registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _FaultCollector(Collector):
    """``ttc_backend_faults_total`` from the watched backends' ``faults`` counters."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Mapping[str, object]]] = []

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ttc_backend_faults", "Failed backend attempts by backend and fault kind",
            labels=["backend", "kind"],
        )  # fmt: skip
        for source in self.sources:
            for name, backend in source().items():
                for kind, count in sorted((getattr(backend, "faults", None) or {}).items()):
                    family.add_metric([name, kind], count)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


def _as_dict(result: Result | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(result, Result):
        # Only the fields read here: dumping candidates (and logprobs) would be wasted work.
        return {
            "trace": result.trace,
            "budget_exhausted": result.budget_exhausted,
            "details": result.details,
            "usage": result.usage.model_dump(),
            "candidate": result.candidate.model_dump() if result.candidate else None,
        }
    return result


def _spans(span: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield span
    for child in span.get("children") or ():
        yield from _spans(child)


def token_counts(result: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """``(backend, kind, tokens)`` triples of a Result dict, summed over its backend spans.

    Without a trace the usage totals are attributed to the chosen candidate's backend (or
    ``unknown``).
    """
    trace = result.get("trace")
    totals: dict[tuple[str, str], int] = {}
    if trace:
        for span in _spans(trace):
            if span.get("kind") != "backend":
                continue
            name = str(span.get("name") or "unknown")
            attrs = span.get("attrs") or {}
            for kind, value in (
                ("prompt", span.get("prompt_tokens", 0)),
                ("completion", span.get("completion_tokens", 0)),
                ("cached", attrs.get("cached_tokens", 0)),
            ):
                totals[(name, kind)] = totals.get((name, kind), 0) + int(value or 0)
    else:
        usage = result.get("usage") or {}
        chosen = result.get("candidate") or {}
        name = str(chosen.get("backend") or "unknown")
        totals[(name, "prompt")] = int(usage.get("prompt_tokens", 0) or 0)
        totals[(name, "completion")] = int(usage.get("completion_tokens", 0) or 0)
        totals[(name, "cached")] = int(usage.get("cached_tokens", 0) or 0)
    return [(backend, kind, n) for (backend, kind), n in totals.items()]


def exhaustion_limit(result: Mapping[str, Any]) -> str:
    """The budget limit that stopped a run, as far as the Result tells; ``unknown`` otherwise.

    Looks, in order, at ``details["budget_exhausted_by"]``, the trace root's attribute
    ``budget_exhausted_by``, a span error ``budget exhausted: <limit>``, and a backend span
    ``truncated_by_budget`` (``completion_tokens``).
    """
    details = result.get("details") or {}
    trace = result.get("trace") or {}
    direct = details.get("budget_exhausted_by") or (trace.get("attrs") or {}).get(
        "budget_exhausted_by"
    )
    if isinstance(direct, str) and direct:
        return direct
    truncated = False
    for span in _spans(trace) if trace else ():
        match = _LIMIT_IN_MESSAGE.search(str(span.get("error") or ""))
        if match:
            return match.group(1)
        truncated = truncated or bool((span.get("attrs") or {}).get("truncated_by_budget"))
    return "completion_tokens" if truncated else "unknown"


# -- middleware --------------------------------------------------------------------------------


def route_label(scope: Scope) -> str:
    """The matched route's path template (with the mount prefix), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return str(scope.get("root_path", "")) + path


class MetricsMiddleware:
    """Counts every HTTP request in ``ServiceMetrics`` (see the module docstring).

    Args:
        app: the wrapped ASGI app.
        metrics: the metrics to update; None reads ``app.state.metrics`` of the Starlette app
            serving the request (and counts nothing when it has none).
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        if metrics is None:
            owner = scope.get("app")
            metrics = getattr(getattr(owner, "state", None), "metrics", None)
        if metrics is None:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0
        capture: list[bytes] | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, capture
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status >= 400 and _is_json(message.get("headers") or []):
                    capture = []
            elif (
                message["type"] == "http.response.body"
                and capture is not None
                and sum(map(len, capture)) < _ERROR_BODY_CAP
            ):
                capture.append(bytes(message.get("body", b"")))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status == 0:  # nothing was sent: the server answers 500
                status = 500
                metrics.observe_error("internal_error")
            raise
        else:
            if status >= 400:
                metrics.observe_error(_error_type(capture, status))
        finally:
            metrics.observe_request(
                route_label(scope), scope.get("method", ""), status, time.perf_counter() - t0
            )


def _is_json(headers: Any) -> bool:
    for name, value in headers:
        if bytes(name).lower() == b"content-type":
            return b"json" in bytes(value).lower()
    return False


def _error_type(chunks: list[bytes] | None, status: int) -> str:
    """``error.type`` of a captured JSON error body, else a name derived from the status."""
    if chunks:
        try:
            body = json.loads(b"".join(chunks))
            value = body.get("error", {}).get("type") if isinstance(body, dict) else None
            if isinstance(value, str) and value:
                return value
        except (ValueError, AttributeError):
            pass
    return f"http_{status}"


def install_metrics(app: FastAPI, metrics: ServiceMetrics | None = None) -> ServiceMetrics:
    """Create (or take) the app's ServiceMetrics, set ``app.state.metrics`` and add the
    middleware. Call once, in the app factory, before the app starts."""
    metrics = metrics if metrics is not None else ServiceMetrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
