"""``verified_resampling`` on the embedded SmolLM2-135M model (in-process vLLM engine).

Structure, not accuracy: a run either returns an accepted answer or abstains cleanly, every
sample and every self-evaluation probe is a traced, charged backend call, and the K chosen by
the value model is in the details and on the strategy span.
"""

from __future__ import annotations

from typing import Any

import pytest

import strategies.verified_resampling  # noqa: F401 - registers the strategy
from orchestrator.backends.base import Backend
from orchestrator.budget import Budget
from orchestrator.runner import Orchestrator
from orchestrator.types import Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "What is 17 + 25?"
NEVER = {"verifier": "format", "regex": "NO_SAMPLE_EVER_SAYS_THIS", "target": "text"}


def strategy_span(result: Result) -> dict[str, Any]:
    assert result.trace is not None
    (span,) = result.trace["children"]
    assert span["kind"] == "strategy" and span["name"] == "verified_resampling"
    return span


def backend_spans(span: dict[str, Any]) -> list[dict[str, Any]]:
    own = [span] if span["kind"] == "backend" else []
    return own + [s for child in span.get("children", []) for s in backend_spans(child)]


def assert_usage_matches_trace(result: Result) -> None:
    spans = backend_spans(strategy_span(result))
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in spans)
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in spans)
    assert result.usage.prompt_tokens == sum(s["prompt_tokens"] for s in spans)


async def test_self_eval_resampling(vllm_engine_backend: Backend) -> None:
    spec = {
        "strategy": "verified_resampling",
        "accuracy": 0.5,  # every attempt adds value: K* = max_k
        "max_k": 3,
        "max_tokens": 64,
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    d = result.details
    assert d["k"] == 3 and d["k_source"] == "optimal" and list(d["value_table"]) == ["1", "2", "3"]
    assert 1 <= d["samples"] <= 3 and len(result.candidates) == d["samples"]
    assert result.usage.completion_tokens > 0
    assert result.usage.calls == 2 * d["samples"]  # each sample, then its one-token probe
    if d["accepted_at"] is not None:
        assert result.answer is not None and d["abstained"] is False
        assert result.candidates[d["accepted_at"] - 1].score >= 0.5
    else:
        assert result.answer is None and d["abstained"] is True and d["reason"] == "none_accepted"
        assert d["samples"] == 3
    attempts = strategy_span(result)["children"]
    assert len(attempts) == d["samples"] and all(a["name"] == "attempt" for a in attempts)
    assert [c["kind"] for c in attempts[0]["children"]] == ["backend", "verifier"]
    assert strategy_span(result)["attrs"]["k"] == 3
    assert_usage_matches_trace(result)


async def test_no_acceptance_abstains_after_k_in_batches(vllm_engine_backend: Backend) -> None:
    spec = {
        "strategy": "verified_resampling",
        "verifier": NEVER,
        "k": 4,
        "batch_size": 2,
        "max_tokens": 48,
        "temperature": 0.8,
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    d = result.details
    assert result.answer is None and d["abstained"] is True and d["reason"] == "none_accepted"
    assert d["samples"] == 4 and result.usage.calls == 2  # native n: one request per batch
    assert all(sc.candidate.text for sc in result.candidates)
    assert_usage_matches_trace(result)


async def test_best_fallback_and_budget(vllm_engine_backend: Backend) -> None:
    spec = {
        "strategy": "verified_resampling",
        "verifier": NEVER,
        "on_exhausted": "best",
        "max_k": 4,
        "accuracy": 0.5,
        "max_tokens": 48,
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, Budget(max_calls=1))
    d = result.details
    assert result.budget_exhausted and d["reason"] == "budget_exhausted"
    assert d["samples"] == 1 and result.usage.calls == 1
    assert result.candidate is not None and d["abstained"] is False
    assert_usage_matches_trace(result)


async def test_abstention_makes_no_call(vllm_engine_backend: Backend) -> None:
    spec = {"strategy": "verified_resampling", "wrong_answer_cost": 1000.0}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    assert result.answer is None and result.details["abstained"] is True
    assert result.details["reason"] == "no_positive_value"
    assert result.usage.calls == 0 and result.candidates == []
