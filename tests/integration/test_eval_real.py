"""``ttc eval`` on the embedded model: the issue's acceptance command, resume, cache sharing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.backends.base import Generation, GenerationRequest
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.datasets import load_dataset
from orchestrator.evaluation.harness import EvalRunner, EvalTarget
from orchestrator.evaluation.records import read_records
from orchestrator.runner import Orchestrator
from orchestrator.store import CompletionCache

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GSM8K_DEV = REPO.parent / "shared" / "data" / "gsm8k_test_dev500.jsonl"


def _need_data() -> None:
    if not GSM8K_DEV.is_file():
        pytest.skip(f"{GSM8K_DEV} not found (the shared data folder sits beside the checkout)")


def test_eval_cli_on_gsm8k_then_resume_runs_nothing(
    embedded_model_dir: Path, tmp_path: Path
) -> None:
    _need_data()
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "eval", "--dataset", str(GSM8K_DEV),
        "--format", "gsm8k", "--strategy", "self_consistency", "--n", "4", "--limit", "20",
        "--max-tokens", "192", "--out", str(tmp_path / "out"),
        "--cache", str(tmp_path / "cache.db"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "self_consistency" in proc.stdout  # the comparison table
    label_dir = tmp_path / "out" / "self_consistency"
    records = read_records(label_dir / "records.jsonl")
    assert len(records) == 20
    assert all(len(r.candidates) == 4 and r.reference for r in records)
    assert sum(r.usage.completion_tokens for r in records) > 0
    summary = json.loads((label_dir / "summary.json").read_text())
    assert summary["problems"] == 20
    assert 0.0 <= summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"] <= 1.0
    assert set(summary["pass_at_k"]) == {"1", "2", "4"}
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)

    before = (label_dir / "records.jsonl").read_bytes()
    again = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to run" in again.stderr
    assert (label_dir / "records.jsonl").read_bytes() == before


@pytest.mark.asyncio(loop_scope="session")
async def test_second_strategy_reuses_cached_samples_on_the_engine(
    vllm_engine_backend: VLLMEngineBackend, tmp_path: Path
) -> None:
    _need_data()
    problems = load_dataset(str(GSM8K_DEV), format="gsm8k", limit=6)
    calls: list[int] = []
    real = vllm_engine_backend.generate

    async def counting(request: GenerationRequest) -> Generation:
        calls.append(request.n)
        return await real(request)

    vllm_engine_backend.generate = counting  # type: ignore[method-assign]
    cache = CompletionCache(f"sqlite:///{tmp_path / 'cache.db'}")
    try:
        orch = Orchestrator([vllm_engine_backend], cache=cache)
        sc = EvalTarget("sc", {"strategy": "self_consistency", "n": 4, "max_tokens": 128})
        rs = EvalTarget("rs", {"strategy": "repeated_sampling", "n": 4, "max_tokens": 128})
        await EvalRunner(orch, problems, [sc], tmp_path / "a", progress=False).run()
        first_calls = len(calls)
        assert first_calls >= 6
        await EvalRunner(orch, problems, [rs], tmp_path / "b", progress=False).run()
    finally:
        del vllm_engine_backend.generate
        await cache.aclose()
    assert len(calls) == first_calls  # the second strategy made no backend call
    a = {r.id: r for r in read_records(tmp_path / "a" / "sc" / "records.jsonl")}
    for r in read_records(tmp_path / "b" / "rs" / "records.jsonl"):
        assert r.candidates == a[r.id].candidates
        assert r.usage.cached_tokens == r.usage.completion_tokens > 0
