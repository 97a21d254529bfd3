"""``early_stopping_sc`` on the in-process vLLM engine serving the embedded SmolLM2 model.

Structure only (an answer or a clean no-answer, usage, batch spans, details), not accuracy.
"""

from __future__ import annotations

from typing import Any

import pytest

import strategies.early_stopping_sc  # noqa: F401 - registers the strategy
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.budget import Budget
from orchestrator.runner import Orchestrator
from orchestrator.types import Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "What is 17 + 25? Put the final answer in \\boxed{}."
KEYS = {"samples_used", "failed", "batches", "stopped_early", "posterior", "votes", "confidence"}


def spans(node: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    own = [node] if node["kind"] == kind else []
    return own + [s for child in node.get("children", []) for s in spans(child, kind)]


def check_structure(result: Result, n_max: int) -> list[dict[str, Any]]:
    """Shared assertions; returns the batch spans."""
    assert result.strategy == "early_stopping_sc"
    assert KEYS.issubset(result.details)
    d = result.details
    assert 1 <= d["samples_used"] <= n_max and d["samples_used"] == len(result.candidates)
    assert 0.0 <= d["posterior"] <= 1.0 and 0.0 <= d["confidence"] <= 1.0
    answered = [sc.candidate.answer for sc in result.candidates if sc.candidate.answer]
    assert sum(d["votes"].values()) == len(answered)
    assert (result.answer is not None) == bool(answered)
    assert result.usage.completion_tokens > 0 and result.usage.calls >= 1
    assert result.trace is not None
    finished = [s for s in spans(result.trace, "backend") if "calls" in s.get("attrs", {})]
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in finished)
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in finished)
    batches = [s for s in spans(result.trace, "step") if s["name"] == "batch"]
    assert len(batches) >= d["batches"] >= 1
    return batches


async def test_early_stopping_sc_sequential(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {
        "strategy": "early_stopping_sc",
        "n_max": 4,
        "batch_size": 2,
        "max_tokens": 96,
        "temperature": 0.8,
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, seed=0)
    batches = check_structure(result, 4)
    assert result.details["batches"] == len(batches) <= 2
    assert all("posterior" in s["attrs"] for s in batches)
    assert result.details["cancelled_batches"] == 0


async def test_early_stopping_sc_parallel_batches(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {
        "strategy": "early_stopping_sc",
        "n_max": 4,
        "batch_size": 1,
        "parallel_batches": 2,
        "threshold": 0.7,
        "max_tokens": 64,
        "temperature": 0.7,
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, seed=1)
    batches = check_structure(result, 4)
    d = result.details
    assert d["batches"] + d["cancelled_batches"] + d["discarded_batches"] == len(batches)
    if d["stopped_early"]:
        assert d["posterior"] >= 0.7


async def test_early_stopping_sc_small_budget(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {"strategy": "early_stopping_sc", "n_max": 4, "batch_size": 2, "max_tokens": 96}
    budget = Budget(max_completion_tokens=100)
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, budget, seed=2)
    check_structure(result, 4)
    assert result.usage.completion_tokens <= 100
    if not result.budget_exhausted:  # the model answered briefly enough to fit every sample
        assert result.details["samples_used"] == 4
