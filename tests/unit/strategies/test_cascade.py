"""Tests for the ``cascade`` strategy: the rules' math and deferral on scripted backends."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import strategies.cascade  # noqa: F401 - registers "cascade"
from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, Result, TokenLogprob
from strategies import build_strategy
from strategies.cascade import (
    Cascade,
    entropy_quantile,
    mean_logprob,
    should_defer,
    token_entropies,
)

QUESTION = "What is 6*7?"
LN2 = math.log(2.0)


class SignalBackend(FakeBackend):
    """Answers ``answer`` with every token at logprob ``lp``; top-k = the token plus ``alts``."""

    def __init__(self, name: str, answer: str, lp: float = -0.1, alts: int = 0, **kw: Any):
        super().__init__(
            name,
            script=lambda req, i: f"The answer is \\boxed{{{answer}}}",
            token_logprobs=self.logprobs_for,
            **kw,
        )
        self.lp = lp
        self.alts = alts

    def logprobs_for(
        self, request: GenerationRequest, index: int, default: list[TokenLogprob]
    ) -> list[TokenLogprob]:
        top = {f"alt{j}": self.lp for j in range(self.alts)} if request.top_logprobs else None
        return [TokenLogprob(token=t.token, logprob=self.lp, top=top) for t in default]


def two(small: FakeBackend, large: FakeBackend) -> Orchestrator:
    return Orchestrator({"small": small, "large": large}, "small")


def spec(**kw: Any) -> dict[str, Any]:
    return {"strategy": "cascade", "large": {"strategy": "single", "backend": "large"}, **kw}


def spans(node: dict[str, Any], name: str, kind: str = "step") -> list[dict[str, Any]]:
    """Spans called ``name`` of ``kind`` (backend spans bear the backend's name)."""
    own = [node] if node.get("name") == name and node.get("kind") == kind else []
    return own + [s for child in node.get("children", []) for s in spans(child, name, kind)]


def position(token: str, logprob: float, top: dict[str, float] | None) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=logprob, top=top)


# --- the math ---------------------------------------------------------------------------------


def test_mean_logprob() -> None:
    cand = Candidate(
        text="a b c",
        logprobs=[position(t, lp, None) for t, lp in [("a", -0.1), ("b", -0.3), ("c", -0.5)]],
    )
    assert mean_logprob(cand) == pytest.approx(-0.3)
    assert mean_logprob(Candidate(text="x")) is None
    assert mean_logprob(Candidate(text="", error="boom", logprobs=cand.logprobs)) is None


def test_token_entropies_of_known_distributions() -> None:
    half = math.log(0.5)
    quarter = math.log(0.25)
    cand = Candidate(
        text="",
        logprobs=[
            position("a", half, {"a": half, "b": half}),  # fair coin: ln 2
            position("a", math.log(0.2), {"a": math.log(0.2), "b": math.log(0.2)}),  # renormalised
            position("d", quarter, {"a": quarter, "b": quarter, "c": quarter}),  # sampled added
            position("a", half, {"a": half, "b": quarter, "c": quarter}),  # 1.5 ln 2
            position("a", -0.01, {"a": -0.01}),  # one alternative: certain
            position("a", -0.5, None),  # no top: skipped
            position("a", half, {"a": half, "b": -math.inf}),  # impossible token ignored
        ],
    )
    got = token_entropies(cand)
    expected = [LN2, LN2, math.log(4.0), 1.5 * LN2, 0.0, 0.0]
    assert got == pytest.approx(expected)
    assert token_entropies(Candidate(text="x")) == []


def test_entropy_quantile_interpolates_linearly() -> None:
    xs = [4.0, 0.0, 3.0, 1.0, 2.0]
    assert entropy_quantile(xs, 0.9) == pytest.approx(3.6)
    assert entropy_quantile(xs, 0.5) == 2.0
    assert entropy_quantile(xs, 1.0) == 4.0
    assert entropy_quantile(xs, 0.0) == 0.0
    assert entropy_quantile([0.7], 0.9) == 0.7
    assert entropy_quantile([], 0.9) is None


def test_should_defer_directions() -> None:
    assert should_defer("mean_logprob", -0.6, -0.5) is True
    assert should_defer("mean_logprob", -0.4, -0.5) is False
    assert should_defer("mean_logprob", -0.5, -0.5) is False
    assert should_defer("entropy_quantile", 1.1, 1.0) is True
    assert should_defer("entropy_quantile", 0.9, 1.0) is False
    assert should_defer("self_eval", 0.4, 0.5) is True
    assert should_defer("vote_disagreement", 0.75, 0.5) is False
    assert should_defer("entropy_quantile", None, 1.0) is True


# --- config -----------------------------------------------------------------------------------


def test_defaults_and_children() -> None:
    s = build_strategy("cascade")
    assert isinstance(s, Cascade)
    assert s.config.rule == "mean_logprob" and s.config.effective_threshold == -0.5
    assert s.config.quantile == 0.9 and s.config.top_logprobs == 20
    assert [c.name for c in s.children()] == ["single", "single"]
    assert s.verifiers() == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"verifier": "self_eval"}, "only used by rule 'self_eval'"),
        ({"small": {"strategy": "self_consistency", "n": 3}}, "must be a 'single' spec"),
        ({"rule": "vote_disagreement"}, "'single' does not vote"),
        ({"quantile": 1.5}, "quantile"),
        ({"rule": "perplexity"}, "rule"),
    ],
)
def test_bad_configs(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy(spec(**extra))


# --- behaviour --------------------------------------------------------------------------------


async def test_confident_small_answer_is_kept() -> None:
    small, large = SignalBackend("small", "41", lp=-0.2), SignalBackend("large", "42")
    result = await two(small, large).run(QUESTION, spec())
    assert result.answer == "41" and result.strategy == "cascade"
    assert (small.calls, large.calls) == (1, 0)
    assert small.requests[0].logprobs is True and small.requests[0].top_logprobs == 0
    d = result.details
    assert d["deferred"] is False and d["answered_by"] == "small" and d["reason"] == "rule"
    assert (d["rule"], d["value"], d["threshold"]) == ("mean_logprob", -0.2, -0.5)
    assert d["small_answer"] == "41" and d["large_answer"] is None
    assert d["cost"]["small"]["calls"] == 1 and "large" not in d["cost"]
    assert result.trace is not None
    assert spans(result.trace, "small") and not spans(result.trace, "large")
    (decision,) = spans(result.trace, "defer decision")
    assert decision["attrs"]["deferred"] is False and decision["attrs"]["tokens"] == 4


async def test_unsure_small_answer_defers_to_large() -> None:
    small, large = SignalBackend("small", "41", lp=-1.0), SignalBackend("large", "42")
    result = await two(small, large).run(QUESTION, spec())
    assert result.answer == "42"
    assert (small.calls, large.calls) == (1, 1)
    assert large.requests[0].logprobs is False  # the large single samples as configured
    d = result.details
    assert d["deferred"] is True and d["answered_by"] == "large" and d["value"] == -1.0
    assert d["small_answer"] == "41" and d["large_answer"] == "42"
    assert [c.candidate.answer for c in result.candidates] == ["41", "42"]
    assert result.usage.calls == 2
    cost = d["cost"]
    assert result.usage.completion_tokens == sum(c["completion_tokens"] for c in cost.values())
    assert result.trace is not None
    (large_span,) = spans(result.trace, "large")
    assert large_span["attrs"]["answer"] == "42" and large_span["attrs"]["calls"] == 1


@pytest.mark.parametrize(("lp", "deferred"), [(-0.29, False), (-0.3, False), (-0.31, True)])
async def test_mean_logprob_threshold_boundary(lp: float, deferred: bool) -> None:
    small, large = SignalBackend("small", "1", lp=lp), SignalBackend("large", "2")
    result = await two(small, large).run(QUESTION, spec(threshold=-0.3))
    assert result.details["deferred"] is deferred
    assert large.calls == int(deferred)
    assert result.answer == ("2" if deferred else "1")


@pytest.mark.parametrize(("threshold", "deferred"), [(0.5, True), (1.0, False)])
async def test_entropy_quantile_rule(threshold: float, deferred: bool) -> None:
    # every position: the sampled token and one alternative, equally likely -> entropy ln 2
    small, large = SignalBackend("small", "1", lp=-0.7, alts=1), SignalBackend("large", "2")
    cfg = spec(rule="entropy_quantile", threshold=threshold)
    result = await two(small, large).run(QUESTION, cfg)
    assert small.requests[0].top_logprobs == 20 and small.requests[0].logprobs
    assert result.details["value"] == round(LN2, 6)
    assert result.details["deferred"] is deferred and large.calls == int(deferred)
    assert result.trace is not None
    (decision,) = spans(result.trace, "defer decision")
    assert decision["attrs"]["quantile"] == 0.9 and decision["attrs"]["tokens"] == 4


@pytest.mark.parametrize(("threshold", "deferred"), [(0.8, True), (0.7, False)])
async def test_self_eval_rule_probes_the_small_backend(threshold: float, deferred: bool) -> None:
    # FakeBackend's probe token has top {w: lp, Yes: lp-1, No: lp-2}: P(Yes) = 1/(1+e^-1)
    small, large = FakeBackend("small", answers=["41"]), FakeBackend("large", answers=["42"])
    result = await two(small, large).run(QUESTION, spec(rule="self_eval", threshold=threshold))
    p_yes = 1.0 / (1.0 + math.exp(-1.0))
    assert result.details["value"] == round(p_yes, 6)
    assert small.calls == 2 and small.requests[1].max_tokens == 1  # answer + probe
    assert result.details["deferred"] is deferred and large.calls == int(deferred)
    assert result.trace is not None
    (decision,) = spans(result.trace, "defer decision")
    assert spans(decision, "self_eval", "verifier") and decision["attrs"]["fallback"] is False
    assert result.details["cost"]["decision"]["calls"] == 1


@pytest.mark.parametrize(("threshold", "deferred"), [(0.6, True), (0.5, False)])
async def test_vote_disagreement_rule(threshold: float, deferred: bool) -> None:
    small = FakeBackend("small", answers=["1", "1", "2", "3"])
    large = FakeBackend("large", answers=["9"])
    cfg = spec(
        rule="vote_disagreement",
        threshold=threshold,
        small={"strategy": "self_consistency", "n": 4},
    )
    result = await two(small, large).run(QUESTION, cfg)
    assert result.details["value"] == 0.5 and result.details["small_answer"] == "1"
    assert result.details["deferred"] is deferred
    assert result.answer == ("9" if deferred else "1")
    assert len(result.candidates) == 4 + int(deferred)


async def test_failed_small_sample_defers_without_measuring() -> None:
    small = SignalBackend("small", "1", lp=-0.01, fail_calls=[0])
    large = SignalBackend("large", "2")
    result = await two(small, large).run(QUESTION, spec())
    d = result.details
    assert d["deferred"] is True and d["reason"] == "no_answer" and d["value"] is None
    assert result.answer == "2" and "error" not in d


async def test_small_without_logprobs_in_reply_defers_as_no_signal() -> None:
    # declares logprobs but its replies carry none (as a server that drops them)
    small = FakeBackend("small", answers=["1"], token_logprobs=lambda req, i, default: None)
    large = FakeBackend("large", answers=["2"])
    result = await two(small, large).run(QUESTION, spec())
    assert result.details["reason"] == "no_signal" and result.answer == "2"


async def test_large_without_answer_falls_back_to_small() -> None:
    small = SignalBackend("small", "1", lp=-2.0)
    large = FakeBackend("large", fail_calls=[0])
    result = await two(small, large).run(QUESTION, spec())
    d = result.details
    assert d["deferred"] is True and d["answered_by"] == "small" and result.answer == "1"
    assert "injected failure" in d["large_error"]


async def test_budget_exhausted_after_small_answer_returns_it() -> None:
    small, large = SignalBackend("small", "41", lp=-1.0), SignalBackend("large", "42")
    result = await two(small, large).run(QUESTION, spec(), Budget(max_calls=1))
    assert result.answer == "41" and result.budget_exhausted is True
    assert (small.calls, large.calls) == (1, 0)
    assert result.details["deferred"] is True and result.details["answered_by"] == "small"
    assert result.usage.calls == 1


async def test_budget_refused_large_child_that_raises() -> None:
    small, large = SignalBackend("small", "41", lp=-1.0), FakeBackend("large")
    large_spec = {"strategy": "self_consistency", "n": 3, "inner": "single", "backend": "large"}
    cfg = spec(large=large_spec)
    result = await two(small, large).run(QUESTION, cfg, Budget(max_calls=1))
    assert result.answer == "41" and result.budget_exhausted is True


async def test_capability_refusal_names_the_capability() -> None:
    small = FakeBackend("small", capabilities=Capabilities())
    large = FakeBackend("large")
    with pytest.raises(CapabilityError, match="logprobs") as err:
        await two(small, large).run(QUESTION, spec())
    assert "small backend" in str(err.value)
    few = FakeBackend("small", capabilities=Capabilities(logprobs=True, top_logprobs=5))
    with pytest.raises(CapabilityError, match="top_logprobs>=20"):
        await two(few, large).run(QUESTION, spec(rule="entropy_quantile"))
    with pytest.raises(CapabilityError, match="self_eval"):
        await two(small, large).run(QUESTION, spec(rule="self_eval"))
    assert small.calls == few.calls == large.calls == 0


async def test_children_are_checked_against_their_own_backends() -> None:
    small, large = SignalBackend("small", "1"), FakeBackend("large", capabilities=Capabilities())
    large_spec = {"strategy": "best_of_n", "n": 2, "backend": "large"}  # mean_logprob verifier
    with pytest.raises(CapabilityError, match=r"'best_of_n'.*logprobs"):
        await two(small, large).run(QUESTION, spec(large=large_spec))
    assert small.calls == large.calls == 0


async def test_one_instance_serves_concurrent_runs() -> None:
    sure, unsure = SignalBackend("small", "1", lp=-0.1), SignalBackend("small", "1", lp=-3.0)
    large = SignalBackend("large", "2")
    cascade = build_strategy(spec())
    results: list[Result] = await asyncio.gather(
        two(sure, large).run(QUESTION, cascade), two(unsure, large).run(QUESTION, cascade)
    )
    assert [r.details["deferred"] for r in results] == [False, True]
    assert [r.answer for r in results] == ["1", "2"]
