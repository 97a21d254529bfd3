"""``adaptive_self_eval`` on the embedded SmolLM2 model (in-process vLLM engine).

Structure only, not accuracy: the untuned 135M model's "would you do better?" probe is not
calibrated (ALGORITHMS.md), so these tests check that both modes run end to end with real top-k
logprobs and prefix continuation, charge and trace every call, and report their accounting.
"""

from __future__ import annotations

from typing import Any

import pytest

import strategies.adaptive_self_eval  # noqa: F401  (registers the strategy)
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.budget import Budget
from orchestrator.runner import Orchestrator
from orchestrator.types import Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "What is 17 + 25?"
DETAIL_KEYS = {"samples_used", "tokens_used", "tokens_saved_vs_full", "stop_reason", "mode"}


def spans_of(span: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    own = [span] if span["kind"] == kind else []
    return own + [s for child in span.get("children", []) for s in spans_of(child, kind)]


def step_names(result: Result) -> list[str]:
    (strategy,) = result.trace["children"]  # type: ignore[index]
    return [s["name"] for s in strategy.get("children", []) if s["kind"] == "step"]


def assert_accounting(result: Result) -> None:
    assert result.trace is not None
    backend = spans_of(result.trace, "backend")
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in backend) > 0
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in backend)
    d = result.details
    assert set(d) >= DETAIL_KEYS
    assert d["tokens_used"] == result.usage.completion_tokens
    assert d["tokens_saved_vs_full"] == d["full_tokens_estimate"] - d["tokens_used"]
    if result.candidate is not None and result.candidate.answer is not None:
        assert result.answer == result.candidate.answer


async def test_adaptive_sampling(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {"strategy": "adaptive_self_eval", "n_max": 4, "max_tokens": 64, "threshold": 0.8}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    d = result.details
    assert 1 <= d["samples_used"] <= 4 and len(result.candidates) == d["samples_used"]
    assert d["stop_reason"] in {"threshold", "n_max"}
    assert all(0.0 <= (sc.score or 0.0) <= 1.0 for sc in result.candidates)
    assert all(sc.scores[0].verifier == "self_eval" for sc in result.candidates)
    assert result.candidate is not None and result.candidate.text.strip()
    names = step_names(result)
    assert names == ["batch", "probe"] * (len(names) // 2) and len(names) >= 2
    probes = [b for v in spans_of(result.trace or {}, "verifier") for b in spans_of(v, "backend")]
    assert len(probes) == d["samples_used"]  # one one-token probe per sample
    assert d["probe_tokens"] == sum(b["completion_tokens"] for b in probes) <= len(probes)
    assert_accounting(result)


async def test_adaptive_zero_threshold_stops_after_one_sample(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    spec = {"strategy": "adaptive_self_eval", "n_max": 4, "max_tokens": 48, "threshold": 0.0}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    assert result.details["samples_used"] == 1 and result.details["stop_reason"] == "threshold"
    assert result.details["tokens_saved_vs_full"] > 0
    assert_accounting(result)


async def test_early_pruning(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {
        "strategy": "adaptive_self_eval",
        "mode": "prune",
        "n": 4,
        "prefix_tokens": 16,
        "max_tokens": 64,
        "keep_fraction": 0.5,
        "temperature": 0.8,
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    d = result.details
    assert d["samples_used"] == 4 and d["kept"] == 2 and d["pruned"] == 2
    assert d["stop_reason"] == "completed" and d["completed"] >= 1
    names = step_names(result)
    assert names[:2] == ["prefixes", "probe"]
    if "continue" in names:  # some survivor was cut at the prefix and continued
        assert names[2:] == ["continue", "probe"]
        continued = [sc for sc in result.candidates if len(sc.scores) == 2]
        assert continued and all(sc.candidate.tokens > 16 for sc in continued)
    assert result.candidate is not None and result.candidate.text.strip()
    assert_accounting(result)


async def test_small_budget_ends_exhausted_with_best_so_far(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    spec = {"strategy": "adaptive_self_eval", "n_max": 4, "max_tokens": 64, "threshold": 1.0}
    budget = Budget(max_completion_tokens=40)
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, budget)
    assert result.budget_exhausted is True
    assert result.usage.completion_tokens <= 40
    assert result.candidate is not None
    assert_accounting(result)
