"""ServiceMetrics, its middleware and GET /metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.errors import install_error_handlers
from orchestrator.api.prometheus import (
    UNMATCHED,
    ServiceMetrics,
    exhaustion_limit,
    install_metrics,
    token_counts,
)
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.types import Candidate, Result, Usage
from tests.api.native_app import Service, serve


def value(svc: Service, name: str, **labels: str) -> float:
    """A sample's value in the service's registry (0 when absent)."""
    return svc.state.metrics.registry.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_request_counters_use_route_templates(tmp_path: Path) -> None:
    async with serve(tmp_path) as svc:
        errors = [(await svc.client.get(f"/v1/runs/{run_id}")) for run_id in ("a1", "b2", "c3")]
        await svc.client.get("/healthz")
        errors.append(await svc.client.get("/no/such/path"))
        text = (await svc.client.get("/metrics")).text
    route = "/v1/runs/{run_id}"
    assert value(svc, "ttc_requests_total", route=route, method="GET", status="404") == 3
    assert value(svc, "ttc_request_seconds_count", route=route) == 3
    assert value(svc, "ttc_requests_total", route="/healthz", method="GET", status="200") == 1
    assert value(svc, "ttc_requests_total", route=UNMATCHED, method="GET", status="404") == 1
    assert "a1" not in text and "/no/such/path" not in text  # no raw paths as labels
    types = Counter(r.json()["error"]["type"] for r in errors)  # counted by the body's type
    assert all(value(svc, "ttc_errors_total", type=t) == n for t, n in types.items())
    assert sum(types.values()) == 4
    samples = scraped(text)
    assert samples[("ttc_requests_total", (("method", "GET"), ("route", route), ("status", "404")))]


async def test_run_counters_tokens_by_backend_and_duration(tmp_path: Path) -> None:
    fast, slow = FakeBackend(name="fast"), FakeBackend(name="slow", prompt_tokens=7)
    async with serve(tmp_path, fast, slow) as svc:
        strategy = {"strategy": "self_consistency", "n": 3}
        one = await svc.client.post("/v1/reason", json={"problem": "q", "strategy": strategy})
        two = await svc.client.post(
            "/v1/reason", json={"problem": "q", "strategy": strategy, "backend": "slow"}
        )
        assert one.status_code == two.status_code == 200
    u1, u2 = one.json()["usage"], two.json()["usage"]
    assert value(svc, "ttc_runs_total", strategy="self_consistency", status="succeeded") == 2
    assert value(svc, "ttc_run_seconds_count", strategy="self_consistency") == 2
    assert (
        value(svc, "ttc_tokens_total", backend="fast", kind="completion")
        == (u1["completion_tokens"])
    )
    assert value(svc, "ttc_tokens_total", backend="fast", kind="prompt") == u1["prompt_tokens"]
    assert (
        value(svc, "ttc_tokens_total", backend="slow", kind="completion")
        == (u2["completion_tokens"])
    )
    assert value(svc, "ttc_tokens_total", backend="slow", kind="prompt") == 7 == u2["prompt_tokens"]
    assert value(svc, "ttc_requests_total", route="/v1/reason", method="POST", status="200") == 2


async def test_failed_cancelled_and_budget_limited_runs(tmp_path: Path) -> None:
    async with serve(
        tmp_path, FakeBackend(name="local"), FakeBackend(name="bad", fail_rate=1.0)
    ) as svc:
        budget = {"max_completion_tokens": 30}
        limited = await svc.client.post(
            "/v1/reason", json={"problem": "q", "strategy": "self_consistency", "budget": budget}
        )
        failed = await svc.client.post(
            "/v1/reason", json={"problem": "q", "strategy": "single", "backend": "bad"}
        )
    assert limited.status_code == 200 and limited.json()["result"]["budget_exhausted"]
    assert failed.status_code == 503
    assert value(svc, "ttc_runs_total", strategy="single", status="failed") == 1
    assert (
        value(
            svc,
            "ttc_budget_exhausted_total",
            strategy="self_consistency",
            limit="completion_tokens",
        )
        == 1
    )
    assert value(svc, "ttc_errors_total", type="backend_error") == 1
    assert value(svc, "ttc_requests_total", route="/v1/reason", method="POST", status="503") == 1


async def test_a_cancelled_run_is_counted(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", latency=5.0)) as svc:
        run_id = await svc.client.post("/v1/runs", json={"problem": "q", "strategy": "single"})
        await svc.client.delete(f"/v1/runs/{run_id.json()['run_id']}")
    assert value(svc, "ttc_runs_total", strategy="single", status="cancelled") == 1


async def test_unhandled_exceptions_count_as_internal_errors() -> None:
    app = FastAPI()
    install_error_handlers(app)
    metrics = install_metrics(app)

    @app.get("/boom/{x}")
    async def boom(x: str) -> None:
        raise RuntimeError("secret detail")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom/1")
    assert response.status_code == 500 and "secret" not in response.text
    sample = metrics.registry.get_sample_value
    assert sample("ttc_requests_total", {"route": "/boom/{x}", "method": "GET", "status": "500"})
    assert sample("ttc_errors_total", {"type": "internal_error"}) == 1


def test_each_service_metrics_has_its_own_registry() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()
    a.observe_request("/x", "GET", 200, 0.01)
    assert (
        a.registry.get_sample_value(
            "ttc_requests_total", {"route": "/x", "method": "GET", "status": "200"}
        )
        == 1
    )
    assert (
        b.registry.get_sample_value(
            "ttc_requests_total", {"route": "/x", "method": "GET", "status": "200"}
        )
        is None
    )
    content, content_type = a.render()
    assert b"ttc_requests_total" in content and content_type.startswith("text/plain")


def backend_span(name: str, prompt: int, completion: int, **attrs: Any) -> dict[str, Any]:
    return {
        "name": name, "kind": "backend", "prompt_tokens": prompt,
        "completion_tokens": completion, "attrs": attrs,
    }  # fmt: skip


def test_token_counts_sum_backend_spans_by_backend() -> None:
    trace = {
        "name": "run", "kind": "run",
        "children": [
            {"name": "sc", "kind": "strategy", "children": [
                backend_span("a", 10, 5), backend_span("b", 3, 4, cached_tokens=4),
                backend_span("a", 10, 6),
            ]},
        ],
    }  # fmt: skip
    counts = {(b, k): n for b, k, n in token_counts({"trace": trace})}
    assert counts == {
        ("a", "prompt"): 20, ("a", "completion"): 11, ("a", "cached"): 0,
        ("b", "prompt"): 3, ("b", "completion"): 4, ("b", "cached"): 4,
    }  # fmt: skip


def test_token_counts_without_a_trace_use_the_usage_and_chosen_backend() -> None:
    chosen = Candidate(text="x", backend="local")
    result = Result(answer="x", candidate=chosen, usage=Usage(prompt_tokens=5, completion_tokens=2))
    metrics = ServiceMetrics()
    metrics.observe_run("single", "succeeded", 0.5, result)
    sample = metrics.registry.get_sample_value
    assert sample("ttc_tokens_total", {"backend": "local", "kind": "prompt"}) == 5
    assert sample("ttc_tokens_total", {"backend": "local", "kind": "completion"}) == 2
    assert sample("ttc_run_seconds_sum", {"strategy": "single"}) == 0.5


def test_exhaustion_limit_reads_what_the_result_tells() -> None:
    assert exhaustion_limit({"details": {"budget_exhausted_by": "usd"}}) == "usd"
    assert exhaustion_limit({"trace": {"attrs": {"budget_exhausted_by": "seconds"}}}) == "seconds"
    error = {"kind": "strategy", "error": "BudgetExhausted: budget exhausted: calls (limit 2)"}
    assert exhaustion_limit({"trace": {"kind": "run", "children": [error]}}) == "calls"
    cut = backend_span("a", 1, 1, truncated_by_budget=True)
    assert exhaustion_limit({"trace": {"kind": "run", "children": [cut]}}) == "completion_tokens"
    assert exhaustion_limit({"trace": {"kind": "run"}}) == "unknown"
    assert exhaustion_limit({}) == "unknown"
