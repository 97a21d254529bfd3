"""Every registered strategy (and some nested specs) against the strategy conformance suite.

``SPECS`` maps a case name to a small spec (``"spec"``) and, optionally, the run's backends
(``"backends"``: FakeBackend name -> extra FakeBackend keyword arguments, the first being the
default), a script factory (``"script"``, with ``StrategyConformance.make_script``'s
signature) and ``"may_abstain": True`` for a strategy documented to return no answer on purpose
(see ``StrategyConformance.may_abstain``). A case whose strategy is not registered (its module
not imported yet) is skipped.
``test_every_registered_strategy_has_a_case`` fails when a strategy is registered without a case,
so a new strategy cannot skip conformance: add one entry here. Case names are the registered
name, or ``name/variant`` for nested and variant specs.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.backends.base import Backend
from orchestrator.budget import Budget
from orchestrator.registry import strategies as registry
from orchestrator.testing import FakeBackend
from orchestrator.testing.fake_backend import Script
from orchestrator.testing.strategy_suite import (
    ConformanceScript,
    StrategyConformance,
    budget_violations,
    expected_answer,
    problem_index,
)
from orchestrator.trace import Span
from strategies.base import StrategySpec

SPECS: dict[str, dict[str, Any]] = {
    "single": {"spec": {"strategy": "single", "max_tokens": 64}},
    "repeated_sampling": {"spec": {"strategy": "repeated_sampling", "n": 4, "max_tokens": 64}},
    "best_of_n": {"spec": {"strategy": "best_of_n", "n": 4, "max_tokens": 64}},
    "self_consistency": {"spec": {"strategy": "self_consistency", "n": 4, "max_tokens": 64}},
    # nested and variant specs
    "self_consistency/inner=best_of_n": {
        "spec": {
            "strategy": "self_consistency",
            "n": 3,
            "inner": {"strategy": "best_of_n", "n": 2, "max_tokens": 64},
        }
    },
    "best_of_n/inner=self_consistency": {
        "spec": {
            "strategy": "best_of_n",
            "n": 2,
            "verifier": "majority_vote",
            "inner": {"strategy": "self_consistency", "n": 3, "max_tokens": 64},
        }
    },
    "repeated_sampling/inner=single": {
        "spec": {"strategy": "repeated_sampling", "n": 3, "inner": {"strategy": "single"}}
    },
    "self_consistency/weighted": {
        "spec": {"strategy": "self_consistency", "n": 4, "verifier": "mean_logprob"}
    },
    "best_of_n/verifier=self_eval": {
        "spec": {"strategy": "best_of_n", "n": 3, "max_tokens": 64, "verifier": "self_eval"}
    },
    # strategies being added (each case is skipped until its module is imported)
    "rpc": {"spec": {"strategy": "rpc", "n": 4, "max_tokens": 64}},
    "early_stopping_sc": {
        "spec": {"strategy": "early_stopping_sc", "n_max": 8, "batch_size": 2, "max_tokens": 64}
    },
    "adaptive_self_eval": {
        "spec": {"strategy": "adaptive_self_eval", "n_max": 4, "max_tokens": 64}
    },
    "adaptive_self_eval/prune": {
        "spec": {
            "strategy": "adaptive_self_eval",
            "mode": "prune",
            "n": 4,
            "prefix_tokens": 8,
            "max_tokens": 64,
        }
    },
    "sift": {"spec": {"strategy": "sift", "max_tokens": 64}},
    "div_se": {"spec": {"strategy": "div_se", "k": 3, "max_tokens": 64}},
    "idiv_se": {"spec": {"strategy": "idiv_se", "k": 3, "max_tokens": 96}},
    "cascade": {
        "spec": {
            "strategy": "cascade",
            "small": {"strategy": "single", "backend": "small", "max_tokens": 64},
            "large": {"strategy": "single", "backend": "large", "max_tokens": 64},
        },
        "backends": {"small": {}, "large": {"model": "large-model"}},
    },
    "cascade/vote_disagreement": {
        "spec": {
            "strategy": "cascade",
            "rule": "vote_disagreement",
            "threshold": 1.01,  # always defers
            "small": {"strategy": "self_consistency", "n": 3, "max_tokens": 64},
            "large": {"strategy": "single", "max_tokens": 64},
        }
    },
    "verified_resampling": {  # the fake probe scores 0.73: never accepted, best returned
        "spec": {
            "strategy": "verified_resampling",
            "k": 3,
            "accept_threshold": 0.9,
            "on_exhausted": "best",
            "max_tokens": 64,
        }
    },
    "verified_resampling/abstain": {  # accepts the first sample; abstains when the budget stops it
        "spec": {"strategy": "verified_resampling", "max_k": 4, "max_tokens": 64},
        "may_abstain": True,
    },
    "best_of_n/judge_backend": {  # samples from one backend, probes with another
        "spec": {
            "strategy": "best_of_n",
            "n": 3,
            "max_tokens": 64,
            "backend": "sampler",
            "verifier": {"verifier": "self_eval", "backend": "judge"},
        },
        "backends": {"sampler": {}, "judge": {"model": "judge-model"}},
    },
}


def strategy_name(spec: StrategySpec) -> str:
    """The registered name a spec builds."""
    return spec if isinstance(spec, str) else str(spec["strategy"])


class TestStrategyConformance(StrategyConformance):
    """The suite, once per ``SPECS`` entry."""

    case: dict[str, Any]

    @pytest.fixture(autouse=True, params=list(SPECS))
    def _case(self, request: pytest.FixtureRequest) -> None:
        self.case = SPECS[request.param]
        self.may_abstain = bool(self.case.get("may_abstain", False))
        name = strategy_name(self.case["spec"])
        if name not in registry:
            pytest.skip(f"strategy {name!r} is not registered (module not imported?)")

    def spec(self) -> StrategySpec:
        spec: StrategySpec = self.case["spec"]
        return spec

    def backends(self, **options: Any) -> list[Backend]:
        named: dict[str, dict[str, Any]] = self.case.get("backends", {"fake": {}})
        return [FakeBackend(name, **{**options, **extra}) for name, extra in named.items()]

    def make_script(self, *, wrong_rate: float = 0.0, empty: bool = False) -> Script:
        factory = self.case.get("script", ConformanceScript)
        script: Script = factory(wrong_rate=wrong_rate, empty=empty)
        return script


def test_every_registered_strategy_has_a_case() -> None:
    registered = {n for n in registry.names() if not n.startswith("_")}
    cased = {strategy_name(case["spec"]) for case in SPECS.values()}
    missing = sorted(registered - cased)
    assert not missing, f"add a SPECS entry (a small spec) for: {', '.join(missing)}"


# --- the suite's own helpers on hand-made inputs -------------------------------------------------


def _span(start: float, end: float | None, *, calls: int = 1, error: str | None = None) -> Span:
    span = Span(name="fake", kind="backend", start=start, end=end, error=error)
    if error is None:
        span.set(calls=calls)
        span.prompt_tokens, span.completion_tokens, span.cost_usd = 10, 5, 0.5
    return span


def test_budget_violations_on_sequential_calls() -> None:
    spans = [_span(0, 1), _span(2, 3), _span(4, 5)]
    assert budget_violations(spans, Budget(max_calls=3)) == []
    (v,) = budget_violations(spans, Budget(max_calls=2))
    assert "max_calls: 2 >= 2" in v
    assert budget_violations(spans, Budget(max_prompt_tokens=21)) == []
    assert len(budget_violations(spans, Budget(max_prompt_tokens=20))) == 1
    assert budget_violations(spans, Budget(max_completion_tokens=15)) == []
    assert budget_violations(spans, Budget(max_completion_tokens=14)) == [
        "15 completion tokens spent, limit 14"
    ]
    assert budget_violations(spans, Budget(max_completion_tokens=10)) == [
        "15 completion tokens spent, limit 10",
        f"call 'fake' (span {spans[2].id}) admitted at max_completion_tokens: 10 >= 10",
    ]
    assert len(budget_violations(spans, Budget(max_usd=1.0))) == 1


def test_budget_violations_count_calls_in_flight_and_skip_failed_ones() -> None:
    overlapping = [_span(0, 5), _span(1, 6), _span(2, 7)]
    assert budget_violations(overlapping, Budget(max_calls=3)) == []
    assert len(budget_violations(overlapping, Budget(max_calls=2))) == 1  # the third one
    # prompt tokens are only known once settled: three calls in flight may cross the line
    assert budget_violations(overlapping, Budget(max_prompt_tokens=1)) == []
    failed = [_span(0, 1, error="BackendUnavailable: x"), _span(2, 3), _span(4, None)]
    assert budget_violations(failed, Budget(max_calls=2)) == []  # the failure spent nothing
    assert len(budget_violations([_span(0, 1, calls=2), _span(2, 3)], Budget(max_calls=2))) == 1


def test_conformance_script_answers_the_tagged_problem() -> None:
    from orchestrator.answers import extract_answer
    from orchestrator.backends.base import GenerationRequest
    from orchestrator.types import Message

    def request(text: str, seed: int | None = None) -> GenerationRequest:
        return GenerationRequest(messages=[Message(role="user", content=text)], seed=seed)

    assert problem_index("Sticker: conditions of Q12 and Q3") == 12
    assert problem_index("no tag here, Q1x, XQ2") == 0
    good = ConformanceScript()(request("Conformance problem Q3: what is 100 plus 21?"), 0)
    assert good.startswith("Problem Q3.") and extract_answer(good) == expected_answer(3) == "121"
    empty = ConformanceScript(empty=True)(request("Q5"), 4)
    assert "Q5" in empty and extract_answer(empty) is None
    wrong = [ConformanceScript(wrong_rate=1.0)(request("Q2", s), 0) for s in range(5)]
    assert {extract_answer(t) for t in wrong} <= {"1000", "1001", "1002"}
    assert ConformanceScript()(request("Q2", 1), 3) == ConformanceScript()(request("Q2", 1), 3)
