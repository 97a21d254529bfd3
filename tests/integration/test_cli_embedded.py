"""``ttc solve`` end to end on the embedded model, as a user runs it (a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def backend_spans(span: dict[str, Any]) -> list[dict[str, Any]]:
    own = [span] if span["kind"] == "backend" else []
    return own + [s for child in span.get("children", []) for s in backend_spans(child)]


def test_solve_json_self_consistency_on_embedded_model(embedded_model_dir: Path) -> None:
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "solve", "What is 17 + 25?",
        "--strategy", "self_consistency", "--n", "8", "--max-tokens", "128", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert data["strategy"] == "self_consistency"
    assert len(data["candidates"]) == 8
    assert all("answer" in sc["candidate"] for sc in data["candidates"])
    answered = [sc["candidate"]["answer"] for sc in data["candidates"] if sc["candidate"]["answer"]]
    assert answered, "SmolLM2 gave no extractable answer in 8 samples"
    assert sum(data["details"]["votes"].values()) == len(answered)
    assert data["answer"] in answered
    usage = data["usage"]
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "calls", "cost_usd", "seconds"}
    spans = backend_spans(data["trace"])
    assert usage["calls"] == sum(s["attrs"]["calls"] for s in spans) >= 1
    assert usage["completion_tokens"] == sum(s["completion_tokens"] for s in spans) > 0
    assert usage["prompt_tokens"] == sum(s["prompt_tokens"] for s in spans) > 0
    assert data["budget_exhausted"] is False


def test_solve_budget_tokens_cli(embedded_model_dir: Path) -> None:
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "solve", "What is 17 + 25?",
        "--strategy", "self_consistency", "--n", "16", "--max-tokens", "128",
        "--budget-tokens", "200", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["budget_exhausted"] is True
    assert data["usage"]["completion_tokens"] <= 200
    assert data["candidate"] is not None
    assert 1 <= len(data["candidates"]) < 16
