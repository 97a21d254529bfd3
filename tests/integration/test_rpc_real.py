"""``rpc`` on the embedded SmolLM2 model through the in-process vLLM engine.

Structure only (real logprobs, the pruning status, spans, usage), never accuracy: a 135M model
may answer anything or nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

import strategies.rpc  # noqa: F401 - registers "rpc"
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.budget import Budget
from orchestrator.runner import Orchestrator
from orchestrator.types import Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "What is 17 + 25? Put the final answer in \\boxed{}."


def spans(node: dict[str, Any], name: str) -> list[dict[str, Any]]:
    own = [node] if node["name"] == name else []
    return own + [s for child in node.get("children", []) for s in spans(child, name)]


def assert_rpc_structure(result: Result) -> None:
    d = result.details
    assert result.usage.completion_tokens > 0 and result.usage.calls >= 1
    answered = [sc for sc in result.candidates if sc.candidate.answer is not None]
    assert d["paths"] == len(answered)  # every answered path has real logprobs
    if answered:
        assert result.answer is not None and result.candidate is not None
        assert 0.0 < d["confidence"] <= 1.0
    else:
        assert result.answer is None and d["scores"] == {} and d["confidence"] == 0.0
    for sc in result.candidates:
        c = sc.candidate
        assert c.logprobs is not None and len(c.logprobs) == c.tokens
        assert 0.0 < sc.scores[0].value <= 1.0
    assert result.trace is not None
    (node,) = spans(result.trace, "rpc")
    assert node["attrs"]["pruning"] == d["pruning"]
    (prune,) = spans(node, "reasoning_pruning")
    (pc,) = spans(node, "perplexity_consistency")
    assert prune["attrs"]["paths"] == d["paths"] and pc["attrs"]["scores"] == d["scores"]


async def test_rpc_small_n_falls_back_to_perplexity_consistency(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    spec = {"strategy": "rpc", "n": 4, "max_tokens": 96, "temperature": 0.8}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    assert len(result.candidates) == 4 and result.usage.calls == 1
    assert result.details["pruning"] == "skipped: N<8" and result.details["pruned"] == 0
    assert_rpc_structure(result)


async def test_rpc_with_pruning_enabled_on_few_paths(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    spec = {"strategy": "rpc", "n": 4, "max_tokens": 96, "min_paths_for_pruning": 2}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    d = result.details
    assert d["pruning"] in ("applied", "skipped: fit failed", "skipped: N<2")
    assert 0 <= d["pruned"] < max(d["paths"], 1)  # the most likely path is never pruned
    if d["pruning"] == "applied":
        assert d["mixture"]["high"] in (1, 2) and 0.2 <= d["mixture"]["weight"] <= 0.8
    assert_rpc_structure(result)


async def test_rpc_small_budget_ends_exhausted_with_best_so_far(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    spec = {"strategy": "rpc", "n": 4, "max_tokens": 64}
    # 12 tokens cannot hold four of SmolLM2's answers (each is several tokens): the meter
    # narrows the first call to n=1 and max_tokens=12, and the budget runs out before n=4
    result = await Orchestrator([vllm_engine_backend]).run(
        QUESTION, spec, Budget(max_completion_tokens=12)
    )
    assert result.budget_exhausted is True
    assert result.usage.completion_tokens <= 12
    assert 1 <= len(result.candidates) < 4 and result.usage.calls >= 1
    assert_rpc_structure(result)
