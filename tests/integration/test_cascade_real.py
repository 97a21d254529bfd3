"""``cascade`` on the embedded model: the same engine serves as both "small" and "large".

Structure only (deferral decisions, spans, usage), not accuracy. Thresholds outside a rule's
range make the decision deterministic: a top-20 entropy lies in [0, ln 20].
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import strategies.cascade  # noqa: F401 - registers "cascade"
from orchestrator.backends.base import Backend
from orchestrator.runner import Orchestrator
from orchestrator.types import Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = "What is 17 + 25?"
SMALL = {"strategy": "single", "max_tokens": 64}
LARGE = {"strategy": "single", "backend": "large", "max_tokens": 64}


def two(engine: Backend) -> Orchestrator:
    return Orchestrator({"small": engine, "large": engine}, "small")


def steps(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    own = {node["name"]: node} if node["kind"] == "step" else {}
    for child in node.get("children", []):
        own.update(steps(child))
    return own


def backend_calls(node: dict[str, Any]) -> int:
    own = node["attrs"]["calls"] if node["kind"] == "backend" else 0
    return int(own) + sum(backend_calls(c) for c in node.get("children", []))


def assert_structure(result: Result, deferred: bool) -> dict[str, dict[str, Any]]:
    assert result.trace is not None and result.usage.completion_tokens > 0
    assert result.usage.calls == backend_calls(result.trace)
    d = result.details
    assert d["deferred"] is deferred
    assert d["answered_by"] in ("small", "large")
    found = steps(result.trace)
    assert {"small", "defer decision"} <= set(found)
    assert ("large" in found) is deferred
    assert found["defer decision"]["attrs"]["deferred"] is deferred
    if result.answer is None:  # a clean no-answer
        assert d["small_answer"] is None and d["large_answer"] is None
    return found


async def test_entropy_rule_keeps_the_small_answer(vllm_engine_backend: Backend) -> None:
    spec = {"strategy": "cascade", "small": SMALL, "large": LARGE, "rule": "entropy_quantile"}
    result = await two(vllm_engine_backend).run(QUESTION, {**spec, "threshold": 100.0})
    no_answer = result.details["reason"] == "no_answer"  # only then does it defer
    assert_structure(result, deferred=no_answer)
    small = result.candidates[0].candidate
    assert small.logprobs and all(t.top for t in small.logprobs)
    if not no_answer:
        assert 0.0 <= result.details["value"] <= math.log(21) + 1e-6
    assert result.usage.calls == 1 + int(no_answer)


async def test_entropy_rule_defers_to_large(vllm_engine_backend: Backend) -> None:
    spec = {"strategy": "cascade", "small": SMALL, "large": LARGE, "rule": "entropy_quantile"}
    result = await two(vllm_engine_backend).run(QUESTION, {**spec, "threshold": -1.0})
    found = assert_structure(result, deferred=True)
    assert result.usage.calls == 2 and len(result.candidates) == 2
    assert found["large"]["attrs"]["calls"] == 1
    cost = result.details["cost"]
    assert result.usage.completion_tokens == sum(c["completion_tokens"] for c in cost.values())


async def test_self_eval_rule(vllm_engine_backend: Backend) -> None:
    spec = {"strategy": "cascade", "small": SMALL, "large": LARGE, "rule": "self_eval"}
    result = await two(vllm_engine_backend).run(QUESTION, spec)
    d = result.details
    if d["reason"] == "no_answer":
        assert d["deferred"] is True and d["value"] is None
    else:
        assert 0.0 <= d["value"] <= 1.0 and d["cost"]["decision"]["calls"] == 1
    assert_structure(result, deferred=d["deferred"])


async def test_vote_disagreement_rule(vllm_engine_backend: Backend) -> None:
    small = {"strategy": "self_consistency", "n": 3, "max_tokens": 64, "temperature": 0.8}
    spec = {
        "strategy": "cascade",
        "small": small,
        "large": LARGE,
        "rule": "vote_disagreement",
        "threshold": 0.6,
    }
    result = await two(vllm_engine_backend).run(QUESTION, spec)
    d = result.details
    assert_structure(result, deferred=d["deferred"])
    if d["small_answer"] is not None:
        assert 0.0 < d["value"] <= 1.0 and d["deferred"] is (d["value"] < 0.6)
    assert len(result.candidates) == 3 + int(d["deferred"])
