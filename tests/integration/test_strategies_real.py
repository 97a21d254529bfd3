"""The same strategies, unchanged, on the in-process engine and on vLLM's server over HTTP.

Both backends serve the embedded SmolLM2 model: ``vllm_engine_backend`` in this process,
``vllm_server_backend`` as ``python -m vllm.entrypoints.openai.api_server`` on a free loopback
port, reached through the OpenAI-compatible backend.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.backends.base import Backend, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.runner import Orchestrator
from orchestrator.types import Message, Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "What is 17 + 25?"


@pytest.fixture(params=["engine", "server"])
def backend(request: pytest.FixtureRequest) -> Backend:
    name = "vllm_engine_backend" if request.param == "engine" else "vllm_server_backend"
    b: Backend = request.getfixturevalue(name)
    return b


def backend_spans(span: dict[str, Any]) -> list[dict[str, Any]]:
    own = [span] if span["kind"] == "backend" else []
    return own + [s for child in span.get("children", []) for s in backend_spans(child)]


def assert_usage_matches_trace(result: Result) -> None:
    assert result.trace is not None
    spans = backend_spans(result.trace)
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in spans)
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in spans)
    assert result.usage.prompt_tokens == sum(s["prompt_tokens"] for s in spans)


async def test_single(backend: Backend) -> None:
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "single", "max_tokens": 64})
    assert result.candidate is not None and result.candidate.text.strip()
    assert result.usage.calls == 1
    assert 0 < result.usage.completion_tokens <= 64
    assert result.usage.prompt_tokens > 5
    assert_usage_matches_trace(result)


async def test_self_consistency(backend: Backend) -> None:
    spec = {"strategy": "self_consistency", "n": 6, "max_tokens": 96, "temperature": 0.8}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert len(result.candidates) == 6
    assert all(sc.candidate.text for sc in result.candidates)
    answered = [sc.candidate.answer for sc in result.candidates if sc.candidate.answer]
    assert sum(result.details["votes"].values()) == len(answered)
    if answered:
        assert result.answer is not None
    assert result.usage.calls == 1  # native n: one request
    assert_usage_matches_trace(result)


async def test_weighted_self_consistency_uses_real_logprobs(backend: Backend) -> None:
    spec = {"strategy": "self_consistency", "n": 4, "max_tokens": 64, "verifier": "mean_logprob"}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    scores = [sc.scores[0].value for sc in result.candidates]
    assert len(scores) == 4 and all(0.0 < s <= 1.0 for s in scores)
    first = result.candidates[0].candidate
    assert first.logprobs is not None and len(first.logprobs) == first.tokens


async def test_small_budget_ends_exhausted_with_best_so_far(backend: Backend) -> None:
    spec = {"strategy": "self_consistency", "n": 16, "max_tokens": 128}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_completion_tokens=200))
    assert result.budget_exhausted is True
    assert result.usage.completion_tokens <= 200
    assert 1 <= len(result.candidates) < 16
    assert result.candidate is not None
    assert_usage_matches_trace(result)


async def test_prefix_continuation(backend: Backend) -> None:
    prefix = "Let me add the tens first: 10 + 20 ="
    request = GenerationRequest(
        messages=[
            Message(role="user", content=QUESTION),
            Message(role="assistant", content=prefix),
        ],
        continue_final=True,
        n=1,
        max_tokens=24,
        temperature=0.0,
    )
    gen = await backend.generate(request)
    assert len(gen.candidates) == 1
    for c in gen.candidates:
        assert c.text and not c.text.startswith(prefix)
        assert 0 < c.tokens <= 24
