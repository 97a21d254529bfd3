"""``div_se``, ``idiv_se`` and approach generation on the embedded SmolLM2 model (in-process vLLM).

Structure only (an answer or a clean no-answer, usage, spans, details), not accuracy: a 135M
model follows the per-approach format loosely, which is what the parser's fallbacks are for.
"""

from __future__ import annotations

from typing import Any

import pytest

import strategies.div_se  # noqa: F401  (registers div_se and idiv_se)
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.budget import Budget
from orchestrator.cli.approaches import generate_approaches
from orchestrator.runner import Orchestrator
from orchestrator.types import Result
from strategies.div_se_approaches import MATH_APPROACHES

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "Tom has 3 bags with 4 apples each. He eats 2 apples. How many apples are left?"


def spans(node: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    own = [node] if node["kind"] == kind else []
    return own + [s for c in node.get("children", []) for s in spans(c, kind)]


def assert_usage_matches_trace(result: Result) -> None:
    assert result.trace is not None
    calls = spans(result.trace, "backend")
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in calls)
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in calls)
    assert result.usage.prompt_tokens == sum(s["prompt_tokens"] for s in calls)


def assert_voted(result: Result, answers: list[str | None]) -> None:
    answered = [a for a in answers if a is not None]
    assert sum(result.details["votes"].values()) == len(answered)
    assert (result.answer is not None) == bool(answered)


async def test_div_se(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {"strategy": "div_se", "k": 3, "max_tokens": 96}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    assert result.usage.calls == 3
    assert 0 < result.usage.completion_tokens <= 3 * 96
    assert len(result.candidates) == 3 and all(sc.candidate.text for sc in result.candidates)
    d = result.details
    assert d["k"] == 3 and d["approaches"] == list(MATH_APPROACHES[:3]) and d["failed"] == 0
    assert len(d["answers"]) == 3
    assert_voted(result, d["answers"])
    assert result.trace is not None
    steps = spans(result.trace, "step")
    assert [s["attrs"]["index"] for s in steps] == [1, 2, 3]
    assert [s["attrs"]["approach"] for s in steps] == list(MATH_APPROACHES[:3])
    assert all(s["children"][0]["kind"] == "backend" for s in steps)
    assert_usage_matches_trace(result)


async def test_div_se_small_budget(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {"strategy": "div_se", "k": 3, "max_tokens": 64}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec, Budget(max_calls=2))
    assert result.budget_exhausted is True
    assert result.usage.calls == 2
    assert result.details["failed"] == 1
    assert_voted(result, result.details["answers"])
    assert_usage_matches_trace(result)


async def test_idiv_se(vllm_engine_backend: VLLMEngineBackend) -> None:
    spec = {"strategy": "idiv_se", "k": 3, "max_tokens": 96}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    assert result.usage.calls == 1
    assert 0 < result.usage.completion_tokens <= 96
    d = result.details
    assert d["k"] == 3 and d["samples"] == 1 and d["failed"] == 0
    assert d["parse"] in ("sections", "answer_lines", "fallback", "none")
    assert len(d["answers"]) == 3
    if d["parse"] in ("sections", "answer_lines"):
        assert len(result.candidates) == 3
        assert_voted(result, d["answers"])
    else:
        assert len(result.candidates) == 1
        assert (result.answer is None) == (d["parse"] == "none")
    assert result.trace is not None
    (step,) = spans(result.trace, "step")
    assert step["name"] == "approaches" and step["attrs"]["parse"] == d["parse"]
    assert_usage_matches_trace(result)


async def test_generate_approaches(vllm_engine_backend: VLLMEngineBackend) -> None:
    got = await generate_approaches(
        Orchestrator([vllm_engine_backend]), "math word problems", 3, max_tokens=96
    )
    assert got.error is None and got.text
    assert got.usage.calls == 1 and 0 < got.usage.completion_tokens <= 96
    assert len(got.approaches) <= 3
    assert all(isinstance(a, str) and len(a) >= 3 for a in got.approaches)
    assert len({a.lower() for a in got.approaches}) == len(got.approaches)
