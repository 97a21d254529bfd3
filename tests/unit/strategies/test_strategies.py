"""Tests for the built-in strategies, their configs and the strategy contract."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.errors import CapabilityError, ConfigError, RegistryError
from orchestrator.registry import strategies as strategy_registry
from orchestrator.registry import verifiers as verifier_registry
from orchestrator.runner import Orchestrator
from orchestrator.stats import coverage_curve
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, Problem, Result, Score, TokenLogprob
from strategies import build_strategy
from strategies.best_of_n import BestOfN
from strategies.repeated_sampling import RepeatedSampling
from strategies.self_consistency import SelfConsistency
from strategies.single import Single
from verifiers import Verifier


@verifier_registry.register("_test_prefer_two")
class PreferTwo(Verifier):
    """Scores answer "2" high and everything else low."""

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: object
    ) -> list[Score]:
        return [
            Score(value=1.0 if c.answer == "2" else 0.1, verifier=self.name) for c in candidates
        ]


class PatternBackend(FakeBackend):
    """A FakeBackend whose per-token logprobs are set per candidate index (by text)."""

    def __init__(self, answers: list[str], logprob: Mapping[int, float], **kw: object) -> None:
        super().__init__(script=self._script, token_logprobs=self.logprobs_for, **kw)  # type: ignore[arg-type]
        self.plan = answers
        self.logprob = logprob

    def _script(self, request: GenerationRequest, i: int) -> str:
        ans = self.plan[i % len(self.plan)]
        body = "no final answer here" if ans == "" else f"The answer is \\boxed{{{ans}}}"
        return f"path{i} {body}"

    def logprobs_for(
        self, request: GenerationRequest, index: int, default: list[TokenLogprob]
    ) -> list[TokenLogprob]:
        lp = self.logprob[index]
        return [t.model_copy(update={"logprob": lp}) for t in default]


def orch(backend: FakeBackend) -> Orchestrator:
    return Orchestrator([backend])


QUESTION = "What is 6*7?"


# --- single -----------------------------------------------------------------------------------


async def test_single() -> None:
    backend = FakeBackend(answers=["42"])
    result = await orch(backend).run(QUESTION, "single")
    assert result.answer == "42" and result.strategy == "single"
    assert result.candidate is not None and result.candidate.answer == "42"
    assert len(result.candidates) == 1
    (req,) = backend.requests
    assert req.n == 1 and req.temperature == 0.0 and req.logprobs is False
    assert req.max_tokens == 512
    assert result.details == {"samples": 1, "failed": 0}
    assert result.usage.calls == 1


async def test_single_with_options_and_logprobs() -> None:
    backend = FakeBackend(answers=["7"])
    spec = {
        "strategy": "single",
        "temperature": 0.9,
        "max_tokens": 64,
        "logprobs": True,
        "stop": ["\n\n"],
    }
    result = await orch(backend).run(Problem(question="q", system_prompt="be brief"), spec)
    req = backend.requests[0]
    assert (req.temperature, req.max_tokens, req.logprobs, req.stop) == (0.9, 64, True, ["\n\n"])
    assert [m.role for m in req.messages or []] == ["system", "user"]
    assert result.candidate is not None and result.candidate.logprobs


async def test_single_failure_gives_no_answer_and_the_error() -> None:
    backend = FakeBackend(fail_calls=[0])
    result = await orch(backend).run(QUESTION, "single")
    assert result.answer is None and result.candidate is None
    assert "injected failure" in result.details["error"]
    assert not result.budget_exhausted


# --- repeated_sampling ------------------------------------------------------------------------


async def test_repeated_sampling_reports_correct_count_and_pass_at_k() -> None:
    backend = FakeBackend(answers=["42", "41", "42.0", "7"])
    problem = Problem(question=QUESTION, reference="42")
    result = await orch(backend).run(problem, {"strategy": "repeated_sampling", "n": 8})
    assert len(result.candidates) == 8
    assert result.details["correct"] == 4
    expected = {str(k): round(v, 6) for k, v in coverage_curve(8, 4).items()}
    assert result.details["pass_at_k"] == expected
    assert list(result.details["pass_at_k"]) == ["1", "2", "4", "8"]
    assert result.details["pass_at_k"]["1"] == 0.5 and result.details["pass_at_k"]["8"] == 1.0
    assert result.answer == "42"  # majority vote (42 and 42.0 agree)
    assert all(sc.scores and sc.scores[0].verifier == "majority_vote" for sc in result.candidates)


async def test_repeated_sampling_default_n_and_no_reference() -> None:
    backend = FakeBackend()
    result = await orch(backend).run(QUESTION, "repeated_sampling")
    assert len(result.candidates) == 16
    assert "pass_at_k" not in result.details and "correct" not in result.details


async def test_repeated_sampling_with_an_oracle_selector() -> None:
    backend = FakeBackend(answers=["1", "1", "1", "5"])
    problem = Problem(question=QUESTION, reference="5")
    spec = {"strategy": "repeated_sampling", "n": 4, "verifier": "reference_match"}
    result = await orch(backend).run(problem, spec)
    assert result.answer == "5"
    assert result.details["correct"] == 1
    assert result.details["pass_at_k"] == {"1": 0.25, "2": 0.5, "4": 1.0}


async def test_repeated_sampling_counts_failed_samples_as_incorrect() -> None:
    backend = FakeBackend(answers=["42"])
    problem = Problem(question=QUESTION, reference="42")
    spec = {"strategy": "repeated_sampling", "n": 4, "inner": "single"}
    backend.fail_calls = {0}
    result = await orch(backend).run(problem, spec)
    assert result.details["samples"] == 4 and result.details["failed"] == 1
    assert result.details["correct"] == 3
    assert result.details["pass_at_k"]["1"] == 0.75


# --- best_of_n --------------------------------------------------------------------------------


async def test_best_of_n_picks_the_highest_score() -> None:
    backend = PatternBackend(["1", "2", "3", "4"], {0: -2.0, 1: -0.5, 2: -0.1, 3: -1.0})
    result = await orch(backend).run(QUESTION, {"strategy": "best_of_n", "n": 4})
    assert backend.requests[0].logprobs is True  # mean_logprob needs them
    assert result.answer == "3"
    assert result.candidate is not None and result.candidate.text.startswith("path2 ")
    assert result.details["best_score"] == pytest.approx(math.exp(-0.1))
    assert [sc.score for sc in result.candidates] == pytest.approx(
        [math.exp(x) for x in (-2.0, -0.5, -0.1, -1.0)]
    )


async def test_best_of_n_prefers_candidates_with_an_answer() -> None:
    backend = PatternBackend(["", "5", "6"], {0: -0.01, 1: -2.0, 2: -1.0})
    result = await orch(backend).run(QUESTION, {"strategy": "best_of_n", "n": 3})
    assert result.candidates[0].candidate.answer is None
    assert result.candidates[0].score == pytest.approx(math.exp(-0.01))  # scored highest...
    assert result.answer == "6"  # ...but has no answer


async def test_best_of_n_ties_break_towards_the_earlier_candidate() -> None:
    backend = PatternBackend(["1", "2", "3"], {0: -1.0, 1: -0.2, 2: -0.2})
    result = await orch(backend).run(QUESTION, {"strategy": "best_of_n", "n": 3})
    assert result.answer == "2"


async def test_best_of_n_with_a_custom_verifier() -> None:
    backend = FakeBackend(answers=["1", "1", "2", "1"])
    spec = {"strategy": "best_of_n", "n": 4, "verifier": "_test_prefer_two"}
    result = await orch(backend).run(QUESTION, spec)
    assert result.answer == "2"
    assert backend.requests[0].logprobs is False


async def test_best_of_n_when_every_sample_fails() -> None:
    backend = FakeBackend(fail_calls=range(10))
    spec = {"strategy": "best_of_n", "n": 3, "inner": "single"}
    result = await orch(backend).run(QUESTION, spec)
    assert result.answer is None and result.candidate is None
    assert len(result.candidates) == 3 and all(sc.candidate.failed for sc in result.candidates)
    assert all(sc.scores == [] for sc in result.candidates)
    assert result.details["failed"] == 3 and "injected failure" in result.details["error"]


# --- self_consistency -------------------------------------------------------------------------


async def test_self_consistency_majority() -> None:
    backend = FakeBackend(answers=["1", "2", "1", "3", "1.0", "2"])
    result = await orch(backend).run(QUESTION, {"strategy": "self_consistency", "n": 6})
    assert result.answer == "1"
    assert result.details["votes"] == {"1": 3.0, "2": 2.0, "3": 1.0}
    assert result.details["confidence"] == 0.5
    assert result.details["samples"] == 6
    assert result.candidate == result.candidates[0].candidate  # first of the winning group
    assert backend.requests[0].n == 6 and backend.requests[0].temperature == 0.7
    assert backend.requests[0].logprobs is False


async def test_self_consistency_ignores_unanswered_samples() -> None:
    backend = PatternBackend(["", "", "", "4", "5", "4"], {})
    result = await orch(backend).run(QUESTION, {"strategy": "self_consistency", "n": 6})
    assert result.answer == "4"
    assert result.details["votes"] == {"4": 2.0, "5": 1.0}
    assert result.details["confidence"] == pytest.approx(2 / 3, abs=1e-6)


async def test_self_consistency_without_any_answer() -> None:
    backend = PatternBackend([""], {})
    result = await orch(backend).run(QUESTION, {"strategy": "self_consistency", "n": 3})
    assert result.answer is None and result.candidate is None
    assert result.details["votes"] == {} and result.details["confidence"] == 0.0


async def test_weighted_self_consistency_with_mean_logprob_overturns_the_majority() -> None:
    answers = ["1", "1", "1", "2", "2"]
    lps = {0: -3.0, 1: -3.0, 2: -3.0, 3: -0.5, 4: -0.1}
    plain = await orch(PatternBackend(answers, lps)).run(
        QUESTION, {"strategy": "self_consistency", "n": 5}
    )
    assert plain.answer == "1"
    backend = PatternBackend(answers, lps)
    weighted = await orch(backend).run(
        QUESTION, {"strategy": "self_consistency", "n": 5, "verifier": "mean_logprob"}
    )
    assert backend.requests[0].logprobs is True
    assert weighted.answer == "2"
    # the best-scored member of the winning group is returned
    assert weighted.candidate is not None and weighted.candidate.text.startswith("path4 ")
    w1, w2 = 3 * math.exp(-3.0), math.exp(-0.5) + math.exp(-0.1)
    assert weighted.details["votes"] == {"1": round(w1, 6), "2": round(w2, 6)}
    assert weighted.details["confidence"] == pytest.approx(w2 / (w1 + w2), abs=1e-6)
    assert all(sc.scores[0].verifier == "mean_logprob" for sc in weighted.candidates)


async def test_weighted_self_consistency_with_a_custom_verifier() -> None:
    backend = FakeBackend(answers=["1", "1", "1", "2", "2"])
    plain = await orch(FakeBackend(answers=["1", "1", "1", "2", "2"])).run(
        QUESTION, {"strategy": "self_consistency", "n": 5}
    )
    spec = {"strategy": "self_consistency", "n": 5, "verifier": "_test_prefer_two"}
    weighted = await orch(backend).run(QUESTION, spec)
    assert plain.answer == "1" and weighted.answer == "2"
    assert weighted.details["votes"] == {"1": pytest.approx(0.3), "2": 2.0}


async def test_self_consistency_over_child_runs() -> None:
    backend = FakeBackend(answers=["3", "3", "4"])
    spec = {"strategy": "self_consistency", "n": 3, "inner": {"strategy": "single"}}
    result = await orch(backend).run(QUESTION, spec)
    assert result.answer == "3"
    assert backend.calls == 3 and all(r.n == 1 for r in backend.requests)
    assert result.details["votes"] == {"3": 2.0, "4": 1.0}


# --- configs, capabilities, describe ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ({"strategy": "self_consistency", "n": 0}, "n", "0"),
        ({"strategy": "best_of_n", "temperature": 3.5}, "temperature", "3.5"),
        ({"strategy": "single", "max_tokens": 0}, "max_tokens", "0"),
        ({"strategy": "repeated_sampling", "top_p": 0}, "top_p", "0"),
        ({"strategy": "self_consistency", "n": "many"}, "n", "'many'"),
    ],
)
def test_config_errors_name_field_value_and_known_fields(
    spec: dict[str, object], field: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(spec)
    msg = str(info.value)
    assert f"strategy {spec['strategy']!r}" in msg
    assert f"{field}: " in msg and f"(got {value})" in msg
    assert "Known fields:" in msg and "temperature" in msg.split("Known fields:")[1]


def test_unknown_config_field() -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy({"strategy": "self_consistency", "samples": 8})
    msg = str(info.value)
    assert "samples: Extra inputs are not permitted (got 8)" in msg
    known = msg.split("Known fields:")[1]
    for name in ("n", "inner", "verifier", "max_tokens", "backend"):
        assert name in known


def test_nested_errors_surface_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"strategy 'single'.*bogus"):
        build_strategy({"strategy": "best_of_n", "inner": {"strategy": "single", "bogus": 1}})
    with pytest.raises(RegistryError, match=r"unknown strategy 'nope'; known: .*self_consistency"):
        build_strategy({"strategy": "best_of_n", "inner": "nope"})
    with pytest.raises(RegistryError, match=r"unknown verifier 'nope'"):
        build_strategy({"strategy": "self_consistency", "verifier": "nope"})
    with pytest.raises(ConfigError, match="'strategy' name field"):
        build_strategy({"n": 3})


def test_build_strategy_forms() -> None:
    assert isinstance(build_strategy("single"), Single)
    sc = build_strategy({"strategy": "self_consistency", "n": 3})
    assert isinstance(sc, SelfConsistency) and sc.config.n == 3
    assert build_strategy(sc) is sc
    assert SelfConsistency(n=5).config.n == 5
    assert SelfConsistency({"n": 5}, temperature=0.2).config.temperature == 0.2
    assert SelfConsistency(sc.config).config.n == 3
    assert strategy_registry.get("best_of_n") is BestOfN
    assert strategy_registry.get("repeated_sampling") is RepeatedSampling


def test_configs_are_frozen() -> None:
    sc = SelfConsistency(n=5)
    with pytest.raises(Exception, match="frozen"):
        sc.config.n = 6


def test_describe() -> None:
    assert build_strategy("single").describe() == {"strategy": "single"}
    spec = {
        "strategy": "best_of_n",
        "n": 4,
        "verifier": "majority_vote",
        "inner": {"strategy": "self_consistency", "n": 4, "max_tokens": 256},
    }
    strat = build_strategy(spec)
    assert strat.describe() == spec
    assert build_strategy(strat.describe()).describe() == spec
    # defaults are left out; the spec rebuilds the same strategy
    assert SelfConsistency(n=5, temperature=0.7).describe() == {
        "strategy": "self_consistency",
        "n": 5,
    }
    assert SelfConsistency(n=8).describe() == {"strategy": "self_consistency"}


def test_children_and_needs() -> None:
    composite = build_strategy({"strategy": "best_of_n", "inner": {"strategy": "single"}})
    (child,) = composite.children()
    assert isinstance(child, Single) and child.children() == []
    assert BestOfN().backend_needs() == Capabilities(logprobs=True)
    assert composite.backend_needs() == Capabilities()  # inner candidates carry no logprobs to need
    assert SelfConsistency().backend_needs() == Capabilities()
    assert SelfConsistency(verifier="mean_logprob").backend_needs() == Capabilities(logprobs=True)
    assert BestOfN(verifier="majority_vote").backend_needs() == Capabilities()
    assert RepeatedSampling(verifier="mean_logprob").backend_needs().logprobs


def test_check_walks_the_graph_and_names_the_missing_capability() -> None:
    plain = FakeBackend(name="plain", capabilities=Capabilities())
    spec = {"strategy": "self_consistency", "inner": {"strategy": "best_of_n"}}
    with pytest.raises(CapabilityError) as info:
        build_strategy(spec).check(lambda name: plain)
    msg = str(info.value)
    assert "'best_of_n'" in msg and "logprobs" in msg and "'plain'" in msg and "FakeBackend" in msg


async def test_strategy_call_opens_a_span_and_stamps_the_name() -> None:
    result = await orch(FakeBackend()).run(QUESTION, {"strategy": "self_consistency", "n": 2})
    assert isinstance(result, Result) and result.strategy == "self_consistency"
    (span,) = result.trace["children"]  # type: ignore[index]
    assert span["kind"] == "strategy" and span["name"] == "self_consistency"
    assert span["attrs"]["answer"] == result.answer
    assert span["attrs"]["votes"] == result.details["votes"]
    assert span["attrs"]["budget_exhausted"] is False
