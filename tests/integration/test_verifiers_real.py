"""``self_eval`` and ``llm_judge`` on the embedded SmolLM2-135M model (in-process vLLM engine).

SmolLM2-135M is a weak judge: these tests check that the pipeline works end to end on real
top logprobs and real judge replies (scores in range, parse failures reported with details),
not that the judgements are good. The self-evaluation test prints the measured cost of a probe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.base import Backend
from orchestrator.runner import Orchestrator
from orchestrator.types import Result

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
on_engine_loop = pytest.mark.asyncio(loop_scope="session")  # the engine fixture's event loop

QUESTION = "What is 17 + 25?"
REPO = Path(__file__).resolve().parents[2]


def strategy_span(result: Result) -> dict[str, Any]:
    assert result.trace is not None
    (span,) = result.trace["children"]
    return span


def verifier_span(result: Result) -> dict[str, Any]:
    (span,) = [c for c in strategy_span(result)["children"] if c["kind"] == "verifier"]
    return span


def assert_usage_matches_trace(result: Result) -> None:
    spans = [
        s for s in strategy_span(result)["children"] if s["kind"] == "backend"
    ] + verifier_span(result)["children"]
    assert all(s["kind"] == "backend" for s in spans)
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in spans)
    assert result.usage.completion_tokens == sum(s["completion_tokens"] for s in spans)


def probe_cost(result: Result) -> str:
    """Per-probe tokens and latency of a best_of_n + self_eval run, against its sampling call."""
    probes = verifier_span(result)["children"]
    (sampling,) = [c for c in strategy_span(result)["children"] if c["kind"] == "backend"]
    prompt_tokens = sum(p["prompt_tokens"] for p in probes) / len(probes)
    wall = verifier_span(result)["seconds"]
    return (
        f"{len(probes)} probes x 1 completion token, {prompt_tokens:.0f} prompt tokens each "
        f"(prefix-cached), all {len(probes)} concurrently in {wall * 1000:.0f} ms "
        f"({wall / len(probes) * 1000:.0f} ms per probe) vs sampling "
        f"{sampling['completion_tokens']} tokens in {sampling['seconds'] * 1000:.0f} ms"
    )


@on_engine_loop
async def test_best_of_n_self_eval_reads_real_top_logprobs(vllm_engine_backend: Backend) -> None:
    spec = {"strategy": "best_of_n", "n": 4, "max_tokens": 64, "verifier": "self_eval"}
    orch = Orchestrator([vllm_engine_backend])
    costs = []
    for run in ("cold", "warm"):  # the engine's first top-logprobs request warms a code path up
        result = await orch.run(QUESTION, spec)
        scores = [sc.scores[0] for sc in result.candidates]
        assert len(scores) == 4 and all(0.0 <= s.value <= 1.0 for s in scores)
        assert any(not s.details["fallback"] for s in scores), [s.details for s in scores]
        for s in scores:
            if not s.details["fallback"]:
                p_yes, p_no = s.details["p_yes"], s.details["p_no"]
                assert s.value == pytest.approx(p_yes / (p_yes + p_no))
        probes = verifier_span(result)["children"]
        assert len(probes) == 4 and all(p["completion_tokens"] == 1 for p in probes)
        assert_usage_matches_trace(result)
        costs.append(f"{run}: {probe_cost(result)}; scores {[round(s.value, 3) for s in scores]}")
    print("\nself_eval " + "\nself_eval ".join(costs))


@on_engine_loop
async def test_self_eval_capability_mode_in_a_user_turn(vllm_engine_backend: Backend) -> None:
    verifier = {"verifier": "self_eval", "mode": "capability", "prefix_continuation": False}
    spec = {"strategy": "best_of_n", "n": 2, "max_tokens": 48, "verifier": verifier}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    scores = [sc.scores[0] for sc in result.candidates]
    assert len(scores) == 2 and all(0.0 <= s.value <= 1.0 for s in scores)
    assert all(s.details["mode"] == "capability" for s in scores)
    for s in scores:
        if not s.details["fallback"]:
            p_yes, p_no = s.details["p_yes"], s.details["p_no"]
            assert s.value == pytest.approx(p_no / (p_yes + p_no))


@pytest.mark.parametrize("prefix", [None, "Score:"])
@on_engine_loop
async def test_best_of_n_llm_judge_pointwise(
    vllm_engine_backend: Backend, prefix: str | None
) -> None:
    verifier = {"verifier": "llm_judge", "mode": "pointwise", "reply_prefix": prefix}
    spec = {"strategy": "best_of_n", "n": 3, "max_tokens": 64, "verifier": verifier}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    scores = [sc.scores[0] for sc in result.candidates]
    assert len(scores) == 3 and all(0.0 <= s.value <= 1.0 for s in scores)
    for s in scores:
        if s.details.get("parse_failed"):
            assert s.value == 0.0 and isinstance(s.details["raw"], str)
            assert s.details["attempts"] == 2
        elif "duplicate_of" not in s.details:
            assert s.value == pytest.approx(s.details["judge_score"] / 10)
    judge_calls = verifier_span(result)["children"]
    assert 1 <= len(judge_calls) <= 6
    assert_usage_matches_trace(result)
    if prefix is not None:  # prefilled, even SmolLM2-135M answers in the format
        assert any(not s.details.get("parse_failed") for s in scores), [s.details for s in scores]
    print(f"\nllm_judge pointwise {prefix=}: {[(s.value, s.details.get('raw')) for s in scores]}")


@on_engine_loop
async def test_best_of_n_llm_judge_pairwise(vllm_engine_backend: Backend) -> None:
    verifier = {"verifier": "llm_judge", "mode": "pairwise"}
    spec = {"strategy": "best_of_n", "n": 3, "max_tokens": 64, "verifier": verifier}
    result = await Orchestrator([vllm_engine_backend]).run(QUESTION, spec)
    scores = [sc.scores[0] for sc in result.candidates]
    assert len(scores) == 3 and all(0.0 <= s.value <= 1.0 for s in scores)
    assert all({"wins", "comparisons", "undecided"} <= set(s.details) for s in scores)
    own = [s for s in scores if "duplicate_of" not in s.details]
    decided = sum(s.details["comparisons"] for s in own) // 2
    assert sum(s.details["wins"] for s in own) == decided
    assert result.candidate is not None
    assert_usage_matches_trace(result)
    print(f"\nllm_judge pairwise: {[(round(s.value, 2), s.details) for s in scores]}")


def test_cli_best_of_n_self_eval(embedded_model_dir: Path) -> None:
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "solve", QUESTION,
        "--strategy", "best_of_n", "--verifier", "self_eval", "--n", "8",
        "--max-tokens", "96", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["strategy"] == "best_of_n" and len(data["candidates"]) == 8
    for sc in data["candidates"]:
        (score,) = sc["scores"]
        assert score["verifier"] == "self_eval" and 0.0 <= score["value"] <= 1.0
    assert data["usage"]["calls"] == 1 + 8
    assert data["budget_exhausted"] is False
