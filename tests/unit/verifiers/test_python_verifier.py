"""Tests for the ``python`` verifier: loading by import path, sync/async calls, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from orchestrator.budget import BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Score
from verifiers import build_verifier
from verifiers.python import Python, as_score_value

PROBLEM = Problem(question="What is 6 times 7?", metadata={"target": "42"})
HERE = __name__

# --- scoring functions the tests point at ------------------------------------------------------

threads: list[str] = []


def exact(problem: Problem, candidate: Candidate) -> float:
    threads.append(threading.current_thread().name)
    return float(candidate.answer == problem.metadata["target"])


async def async_length(problem: Problem, candidate: Candidate) -> int:
    await asyncio.sleep(0)
    return len(candidate.text)


def lazy(problem: Problem, candidate: Candidate) -> Any:
    if candidate.text == "boom":
        raise ValueError("cannot score this")
    return {"text": "high", "nan": float("nan"), "true": True}.get(candidate.text, 0.5)


def slow(problem: Problem, candidate: Candidate) -> float:
    time.sleep(0.3 if candidate.text == "slow" else 0.0)
    return 1.0


def raises_timeout(problem: Problem, candidate: Candidate) -> float:
    raise TimeoutError("socket timed out")


class Scorer:
    """A callable object and a namespace for dotted attributes."""

    async def __call__(self, problem: Problem, candidate: Candidate) -> float:
        return 0.25

    @staticmethod
    def method(problem: Problem, candidate: Candidate) -> float:
        return 0.75


scorer = Scorer()
NOT_CALLABLE = 3


# --- helpers ----------------------------------------------------------------------------------


def cand(text: str, answer: str | None = None, *, error: str | None = None) -> Candidate:
    return Candidate(text=text, answer=answer, error=error)


async def score(verifier: Python, cands: list[Candidate]) -> list[Score]:
    ctx = RunContext(PROBLEM, {"fake": FakeBackend()}, "fake", BudgetMeter(), Trace())
    scores = await verifier(PROBLEM, cands, ctx)
    assert all(s.verifier == "python" for s in scores)
    return scores


# --- calls ------------------------------------------------------------------------------------


async def test_sync_function_runs_in_a_thread() -> None:
    threads.clear()
    verifier = Python(function=f"{HERE}:exact")
    scores = await score(verifier, [cand("a", "42"), cand("b", "41"), cand("c")])
    assert [s.value for s in scores] == [1.0, 0.0, 0.0]
    assert threads and threading.main_thread().name not in threads


async def test_async_function_and_async_callable_object() -> None:
    scores = await score(Python(function=f"{HERE}:async_length"), [cand("abc"), cand("")])
    assert [s.value for s in scores] == [3.0, 0.0]
    assert [s.value for s in await score(Python(function=f"{HERE}:scorer"), [cand("x")])] == [0.25]


async def test_dotted_attribute() -> None:
    verifier = Python(function=f"{HERE}:Scorer.method")
    assert [s.value for s in await score(verifier, [cand("x")])] == [0.75]


async def test_errors_and_non_numbers_get_error_score() -> None:
    verifier = Python(function=f"{HERE}:lazy", error_score=-1.0)
    cands = [cand("boom"), cand("text"), cand("nan"), cand("true"), cand("other")]
    scores = await score(verifier, cands)
    assert [s.value for s in scores] == [-1.0, -1.0, -1.0, 1.0, 0.5]
    assert scores[0].details["error"] == "ValueError: cannot score this"
    assert scores[1].details["error"] == "returned 'high', not a finite number"
    assert "nan" in scores[2].details["error"]
    assert scores[4].details == {}


async def test_failed_candidates_are_not_passed_to_the_function() -> None:
    threads.clear()
    scores = await score(Python(function=f"{HERE}:exact"), [cand("x", "42", error="boom")])
    assert scores[0].value == 0.0 and scores[0].details["error"] == "candidate failed: boom"
    assert threads == []


async def test_timeout_gives_error_score_without_blocking_the_others() -> None:
    verifier = Python(function=f"{HERE}:slow", timeout=0.05)
    started = time.perf_counter()
    scores = await score(verifier, [cand("slow"), cand("fast")])
    assert time.perf_counter() - started < 0.25
    assert [s.value for s in scores] == [0.0, 1.0]
    assert scores[0].details["error"] == "timed out after 0.05s"


async def test_a_timeout_error_from_the_function_is_not_a_deadline() -> None:
    (s,) = await score(Python(function=f"{HERE}:raises_timeout", timeout=5), [cand("x")])
    assert s.details["error"] == "TimeoutError: socket timed out"


async def test_sync_calls_do_not_block_the_event_loop() -> None:
    verifier = Python(function=f"{HERE}:slow")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await score(verifier, [cand("slow")])
    task.cancel()
    assert ticks >= 10


def test_as_score_value() -> None:
    assert as_score_value(1) == 1.0 and as_score_value(False) == 0.0
    assert as_score_value("1") is None and as_score_value(float("inf")) is None


# --- loading ----------------------------------------------------------------------------------


def test_function_is_loaded_once_at_build_time() -> None:
    verifier = build_verifier({"verifier": "python", "function": f"{HERE}:exact"})
    assert isinstance(verifier, Python) and verifier._fn is exact
    assert verifier.describe() == {"verifier": "python", "function": f"{HERE}:exact"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:score", r"cannot import module 'no_such_module_xyz'"),
        (f"{HERE}:missing", r"has no attribute 'missing'"),
        (f"{HERE}:Scorer.missing", r"has no attribute 'Scorer.missing'"),
        (f"{HERE}:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a callable"),
    ],
)
def test_bad_paths_are_config_errors_naming_the_path(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Python(function=path)
    assert repr(path) in str(info.value)


@pytest.mark.parametrize("path", ["no_colon", ":score", "mod:", ""])
def test_malformed_paths(path: str) -> None:
    with pytest.raises(ConfigError, match="expected 'module:function'"):
        Python(function=path)


def test_function_is_required() -> None:
    with pytest.raises(ConfigError, match="function: Field required"):
        Python()
