"""Every registered verifier against the verifier conformance suite.

``FACTORIES`` holds one sensible configuration per registered name; each ``Test*`` class runs
``orchestrator.testing.VerifierConformance`` on one of them. A verifier whose module is not
there (yet) is not registered: its case is skipped rather than failing at import.
``test_every_registered_verifier_has_a_conformance_case`` fails when a new verifier is
registered without a factory and a case here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from orchestrator.registry import verifiers as registry
from orchestrator.testing.verifier_suite import VerifierConformance
from orchestrator.types import Candidate, Problem
from verifiers import Verifier, build_verifier

# --- the fake reward-model server, started on first use ------------------------------------------

_reward_server: Any = None


def _reward_server_url() -> str:
    """The URL of a running fake reward server (started once for this module)."""
    global _reward_server
    if _reward_server is None:
        try:
            module = importlib.import_module("orchestrator.testing.fake_reward_server")
        except ModuleNotFoundError:
            pytest.skip("orchestrator.testing.fake_reward_server is not written yet")
        _reward_server = module.FakeRewardServer().start()
    url: str = _reward_server.root_url
    return url


@pytest.fixture(autouse=True, scope="module")
def _stop_reward_server() -> Iterator[None]:
    global _reward_server
    yield
    if _reward_server is not None:
        _reward_server.stop()
        _reward_server = None


def _reward_model() -> Verifier:
    return build_verifier(
        {
            "verifier": "reward_model",
            "kind": "generic",
            "url": _reward_server_url() + "/pooling",  # vLLM's pooling API, called generically
            "request_template": {"model": "fake-rm", "input": "{question}\n\n{answer}"},
            "score_path": "data.0.data.0",
        }
    )


# --- one configuration per registered verifier ---------------------------------------------------

FACTORIES: dict[str, Callable[[], Verifier]] = {
    "reference_match": lambda: build_verifier("reference_match"),
    "majority_vote": lambda: build_verifier("majority_vote"),
    "mean_logprob": lambda: build_verifier({"verifier": "mean_logprob", "length_floor": 2}),
    "format": lambda: build_verifier({"verifier": "format", "regex": r"-?\d+"}),
    "python": lambda: build_verifier(
        {"verifier": "python", "function": "tests.conformance._helpers:length_score"}
    ),
    "weighted_sum": lambda: build_verifier(
        {
            "verifier": "weighted_sum",
            "verifiers": [
                {"verifier": "majority_vote", "weight": 2.0},
                {"verifier": "mean_logprob"},
            ],
        }
    ),
    "all_of": lambda: build_verifier(
        {
            "verifier": "all_of",
            "verifiers": [{"verifier": "format", "regex": r"\d+"}, "majority_vote"],
        }
    ),
    "first_success": lambda: build_verifier(
        {
            "verifier": "first_success",
            "verifiers": [{"verifier": "format", "regex": "42"}, "mean_logprob"],
        }
    ),
    "self_eval": lambda: build_verifier({"verifier": "self_eval", "mode": "correctness"}),
    "llm_judge": lambda: build_verifier({"verifier": "llm_judge", "mode": "pointwise"}),
    "unit_tests": lambda: build_verifier(
        {"verifier": "unit_tests", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}
    ),
    "reward_model": _reward_model,
}


class Case(VerifierConformance):
    """Runs the suite on ``FACTORIES[verifier_name]``; skipped when that name is unregistered."""

    verifier_name: ClassVar[str]

    def setup_method(self) -> None:
        if self.verifier_name not in registry:
            pytest.skip(f"verifier {self.verifier_name!r} is not registered (module missing?)")

    def make_verifier(self) -> Verifier:
        return FACTORIES[self.verifier_name]()


class TestReferenceMatch(Case):
    verifier_name = "reference_match"

    def make_problem(self) -> Problem:
        return Problem(question="What is 6 times 7?", reference="42")


class TestMajorityVote(Case):
    verifier_name = "majority_vote"


class TestMeanLogprob(Case):
    verifier_name = "mean_logprob"


class TestFormat(Case):
    verifier_name = "format"


class TestPython(Case):
    verifier_name = "python"


class TestWeightedSum(Case):
    verifier_name = "weighted_sum"


class TestAllOf(Case):
    verifier_name = "all_of"


class TestFirstSuccess(Case):
    verifier_name = "first_success"


class TestSelfEval(Case):
    verifier_name = "self_eval"


class TestLLMJudge(Case):
    verifier_name = "llm_judge"


class TestUnitTests(Case):
    verifier_name = "unit_tests"

    def make_candidates(self) -> list[Candidate]:
        bodies = ["return a + b", "return a - b", "return b + a"]
        return [
            Candidate(
                text=f"Here is the function:\n```python\ndef add(a, b):\n    {body}\n```",
                tokens=12,
                finish_reason="stop",
            )
            for body in bodies
        ]


class TestRewardModel(Case):
    verifier_name = "reward_model"  # the fake server's scores are in [0, 1]


def test_every_registered_verifier_has_a_conformance_case() -> None:
    registered = {n for n in registry.names() if not n.startswith("_")}
    cased = {cls.verifier_name for cls in Case.__subclasses__()}
    assert not registered - FACTORIES.keys(), "add a factory to FACTORIES"
    assert not registered - cased, "add a Test* subclass of Case"
