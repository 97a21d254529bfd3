"""``sift`` on the in-process vLLM engine (embedded SmolLM2-135M): structure, not accuracy.

A 135M model writes poor Stickers and rarely agrees with itself, so these tests check what SIFT
must always do: stay within 11 calls, keep every stage's Sticker in the trace and the details,
report usage equal to the backend spans, and end with an answer or a clean no-answer.
"""

from __future__ import annotations

from typing import Any

import pytest

import strategies.sift  # noqa: F401  (registers "sift")
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.budget import Budget
from orchestrator.runner import Orchestrator
from orchestrator.types import Result
from strategies.sift import MAX_CALLS

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many are left?"
SMALL = {"max_tokens": 96, "sticker_max_tokens": 64}


def spans(node: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    own = [node] if node["kind"] == kind else []
    return own + [s for c in node.get("children", []) for s in spans(c, kind)]


def assert_well_formed(result: Result) -> None:
    """What every SIFT result satisfies, whatever the model says."""
    d = result.details
    assert result.trace is not None
    backend = spans(result.trace, "backend")
    assert 0 < result.usage.calls == len(backend) == d["calls"] <= MAX_CALLS
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in backend) > 0
    assert d["stage"] in (1, 2, 3, "fallback", None)
    if result.answer is not None:
        assert result.candidate is not None and result.candidate.answer == result.answer
    if d["stage"] in (1, 2, 3):
        assert d["picked"] == f"stage{d['stage']}.q_a2p"
    steps = {s["name"]: s for s in spans(result.trace, "step")}
    for name, sticker in d["stickers"].items():
        if name.startswith("stage") and name[5:].isdigit():
            assert steps[name]["attrs"]["sticker"] == sticker


async def test_sift_lazy(vllm_engine_backend: VLLMEngineBackend) -> None:
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, {"strategy": "sift", **SMALL})
    assert_well_formed(result)
    assert result.details["fallback_mode"] == "lazy"
    assert result.details["stage"] is not None and not result.budget_exhausted
    assert "stage1" in result.details["stickers"] or result.details["stage"] == "fallback"
    if result.details["stage"] == 1:
        assert result.usage.calls == 3


async def test_sift_eager_under_a_call_budget(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {"strategy": "sift", "fallback": "eager", **SMALL}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, Budget(max_calls=4))
    assert_well_formed(result)
    assert result.usage.calls <= 4
    assert "fallback" in result.details["answers"]  # eager: P_Q is admitted right after S1
    if result.details["stage"] is None:
        assert result.budget_exhausted


async def test_sift_inside_self_consistency(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {
        "strategy": "self_consistency",
        "n": 2,
        "inner": {"strategy": "sift", "temperature": 0.7, **SMALL},
    }
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    assert result.trace is not None
    runs = [s for s in spans(result.trace, "strategy") if s["name"] == "sift"]
    assert len(runs) == 2
    assert 0 < result.usage.calls <= 2 * MAX_CALLS
    assert result.details["samples"] == 2
    assert sum(result.details["votes"].values()) <= 2
