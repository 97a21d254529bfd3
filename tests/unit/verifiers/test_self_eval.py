"""Tests for the ``self_eval`` verifier (one-token Yes/No probe) on FakeBackend."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import pytest

from orchestrator.backends.base import Capabilities, Generation, GenerationRequest
from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, TokenLogprob
from verifiers import build_verifier
from verifiers.self_eval import DEFAULT_QUESTIONS, SelfEval, verdict_word, yes_no_probabilities

PROBLEM = Problem(question="What is 6 * 7?")


class ProbeBackend(FakeBackend):
    """FakeBackend whose one-token probes read scripted top-k probabilities.

    ``tops`` maps a marker (a substring of the candidate text in the probe's messages) to the
    probe token's top alternatives as probabilities. Other requests sample like FakeBackend.
    """

    def __init__(self, tops: Mapping[str, Mapping[str, float]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tops = tops
        self.probes: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        if not (request.max_tokens == 1 and request.top_logprobs):
            return await super().generate(request)
        self.calls += 1
        self.requests.append(request)
        self.probes.append(request)
        text = " ".join(m.content for m in request.messages or [])
        top = next((t for marker, t in self.tops.items() if marker in text), {"Hmm": 0.9})
        lps = {tok: math.log(p) for tok, p in top.items()}
        token = max(lps, key=lambda t: lps[t])
        lp = TokenLogprob(token=token, logprob=lps[token], top=lps)
        cand = Candidate(text=token, tokens=1, logprobs=[lp], finish_reason="length")
        return Generation(candidates=[cand], prompt_tokens=30, completion_tokens=1)


def make_ctx(*backends: FakeBackend, budget: Budget | None = None) -> RunContext:
    by_name = {b.name: b for b in backends}
    return RunContext(PROBLEM, by_name, backends[0].name, BudgetMeter(budget), Trace(), seed=1)


def cand(text: str, error: str | None = None) -> Candidate:
    return Candidate(text=text, tokens=len(text.split()), answer=text[-2:], error=error)


async def values(verifier: SelfEval, ctx: RunContext, cands: list[Candidate]) -> list[float]:
    return [s.value for s in await verifier(PROBLEM, cands, ctx)]


# --- the P(Yes) formula -----------------------------------------------------------------------


def test_verdict_word_variants() -> None:
    for tok in ("Yes", " Yes", "yes", "YES", " yes", "\u0120Yes", "\u2581yes", "Yes.", "**Yes**"):
        assert verdict_word(tok) == "yes", tok
    for tok in ("No", " No", "no", "NO", "\nNo", "No,"):
        assert verdict_word(tok) == "no", tok
    for tok in ("Not", "Yesterday", "None", "y", "", " "):
        assert verdict_word(tok) is None, tok


def test_yes_no_probabilities_sum_variants_and_count_the_sampled_token() -> None:
    top = {" Yes": math.log(0.3), "yes": math.log(0.1), "No": math.log(0.2), "Not": -0.1}
    p_yes, p_no = yes_no_probabilities(TokenLogprob(token="YES", logprob=math.log(0.05), top=top))
    assert p_yes == pytest.approx(0.45) and p_no == pytest.approx(0.2)


async def test_default_fake_backend_top_gives_the_fixed_ratio() -> None:
    # FakeBackend puts Yes at lp - 1 and No at lp - 2: P(Yes) / (P(Yes) + P(No)) = 1 / (1 + e^-1)
    ctx = make_ctx(FakeBackend())
    (score,) = await SelfEval()(PROBLEM, [cand("It is 42")], ctx)
    assert score.value == pytest.approx(1 / (1 + math.exp(-1)))
    assert score.details["p_yes"] / score.details["p_no"] == pytest.approx(math.e)
    assert score.details["fallback"] is False and score.details["mode"] == "correctness"


async def test_score_sums_case_and_whitespace_variants() -> None:
    tops = {
        "#1": {" Yes": 0.30, "yes": 0.10, "YES": 0.05, " No": 0.10, "no": 0.05, "The": 0.2},
        "#2": {"No": 0.60, " no": 0.20, "Yes": 0.10, "Maybe": 0.05},
        "#3": {" Yes": 0.5, "I": 0.3},  # only Yes among the top k
    }
    ctx = make_ctx(ProbeBackend(tops))
    scores = await SelfEval()(PROBLEM, [cand("#1 x"), cand("#2 x"), cand("#3 x")], ctx)
    assert [s.value for s in scores] == pytest.approx([0.45 / 0.60, 0.10 / 0.90, 1.0])
    assert scores[0].details["p_yes"] == pytest.approx(0.45)
    assert scores[0].details["p_no"] == pytest.approx(0.15)
    assert all(s.details["fallback"] is False for s in scores)


async def test_fallback_when_neither_yes_nor_no_is_in_the_top_k() -> None:
    ctx = make_ctx(ProbeBackend({"#1": {"The": 0.5, "I": 0.2}}))
    (score,) = await SelfEval()(PROBLEM, [cand("#1 x")], ctx)
    assert score.value == 0.5 and score.details["fallback"] is True
    assert score.details["p_yes"] == 0.0 and score.details["p_no"] == 0.0
    (score,) = await SelfEval(fallback_score=0.2)(PROBLEM, [cand("#1 x")], ctx)
    assert score.value == 0.2 and score.details["fallback"] is True


async def test_capability_mode_scores_p_no_and_asks_its_own_question() -> None:
    backend = ProbeBackend({"#1": {"Yes": 0.2, "No": 0.6}})
    ctx = make_ctx(backend)
    (score,) = await SelfEval(mode="capability")(PROBLEM, [cand("#1 x")], ctx)
    assert score.value == pytest.approx(0.75) and score.details["mode"] == "capability"
    (probe,) = backend.probes
    assert probe.messages is not None
    assert DEFAULT_QUESTIONS["capability"] in probe.messages[-1].content
    assert "started over" in DEFAULT_QUESTIONS["capability"]


async def test_custom_question() -> None:
    backend = ProbeBackend({})
    await SelfEval(question="Is this right?")(PROBLEM, [cand("x")], make_ctx(backend))
    assert backend.probes[0].messages is not None
    assert backend.probes[0].messages[-1].content.endswith("Is this right?\nAnswer:")
    with pytest.raises(ConfigError, match="question"):
        SelfEval(question="")


# --- the probe request ------------------------------------------------------------------------


async def test_prefix_continuation_probe_continues_the_assistant_message() -> None:
    backend = ProbeBackend({})
    await SelfEval()(PROBLEM, [cand("The answer is 42")], make_ctx(backend))
    (probe,) = backend.requests
    assert probe.continue_final is True
    assert probe.messages is not None and [m.role for m in probe.messages] == ["user", "assistant"]
    assert probe.messages[0].content == PROBLEM.question
    question = DEFAULT_QUESTIONS["correctness"]
    assert probe.messages[-1].content == f"The answer is 42\n\n{question}\nAnswer:"
    assert (probe.max_tokens, probe.temperature, probe.n) == (1, 0.0, 1)
    assert probe.logprobs is True and probe.top_logprobs == 20


@pytest.mark.parametrize("why", ["backend", "config"])
async def test_user_turn_probe_without_prefix_continuation(why: str) -> None:
    caps = Capabilities(logprobs=True, top_logprobs=20, prefix_continuation=why == "config")
    backend = ProbeBackend({}, capabilities=caps)
    verifier = SelfEval(prefix_continuation=why != "config")
    await verifier(PROBLEM, [cand("The answer is 42")], make_ctx(backend))
    (probe,) = backend.requests
    assert probe.continue_final is False and probe.messages is not None
    assert [m.role for m in probe.messages] == ["user", "assistant", "user"]
    assert probe.messages[1].content == "The answer is 42"
    assert probe.messages[2].content == DEFAULT_QUESTIONS["correctness"]


async def test_system_prompt_is_kept_in_the_probe() -> None:
    backend = ProbeBackend({})
    problem = Problem(question="q", system_prompt="Be brief.")
    ctx = RunContext(problem, {"fake": backend}, "fake", BudgetMeter(), Trace())
    await SelfEval()(problem, [cand("x")], ctx)
    assert backend.probes[0].messages is not None
    assert [m.role for m in backend.probes[0].messages] == ["system", "user", "assistant"]


async def test_probe_runs_on_the_configured_backend() -> None:
    policy, judge = FakeBackend(name="policy"), ProbeBackend({}, name="judge")
    ctx = make_ctx(policy, judge)
    await SelfEval(backend="judge")(PROBLEM, [cand("a"), cand("b")], ctx)
    assert (policy.calls, judge.calls) == (0, 2)


# --- capabilities, failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "missing"),
    [
        (Capabilities(prefix_continuation=True), "logprobs"),
        (Capabilities(logprobs=True, top_logprobs=5), "top_logprobs>=20"),
    ],
)
async def test_capability_error_names_the_missing_capability(
    caps: Capabilities, missing: str
) -> None:
    backend = FakeBackend(capabilities=caps)
    with pytest.raises(CapabilityError, match=rf"self_eval.*{missing}.*'fake'"):
        await SelfEval()(PROBLEM, [cand("x")], make_ctx(backend))
    assert backend.calls == 0


async def test_fewer_top_logprobs_when_configured() -> None:
    backend = ProbeBackend({}, capabilities=Capabilities(logprobs=True, top_logprobs=5))
    await SelfEval(top_logprobs=5)(PROBLEM, [cand("x")], make_ctx(backend))
    assert backend.probes[0].top_logprobs == 5


def test_needs_nothing_from_the_sampling_backend() -> None:
    assert SelfEval.candidate_needs == Capabilities()


async def test_failed_candidates_score_zero_without_a_call() -> None:
    backend = ProbeBackend({"ok": {"Yes": 0.9, "No": 0.1}})
    scores = await SelfEval()(PROBLEM, [cand("", error="boom"), cand("ok")], make_ctx(backend))
    assert scores[0].value == 0.0 and scores[0].details["failed"] is True
    assert scores[1].value == pytest.approx(0.9)
    assert backend.calls == 1


async def test_backend_error_gives_the_fallback_with_the_error() -> None:
    backend = FakeBackend(fail_calls={1})
    scores = await SelfEval()(PROBLEM, [cand("a"), cand("b"), cand("c")], make_ctx(backend))
    failed = [s for s in scores if "error" in s.details]
    assert len(failed) == 1 and failed[0].value == 0.5 and failed[0].details["fallback"]
    assert "injected failure" in failed[0].details["error"]


async def test_cancellation_propagates() -> None:
    backend = FakeBackend(latency=5.0)
    task = asyncio.create_task(SelfEval()(PROBLEM, [cand("a"), cand("b")], make_ctx(backend)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- budget and trace -------------------------------------------------------------------------


async def test_probes_are_charged_to_the_budget() -> None:
    ctx = make_ctx(FakeBackend(prompt_tokens=25))
    await SelfEval()(PROBLEM, [cand("a"), cand("b"), cand("c")], ctx)
    usage = ctx.meter.usage
    assert (usage.calls, usage.completion_tokens, usage.prompt_tokens) == (3, 3, 75)


async def test_budget_exhausted_mid_scoring_gives_the_fallback() -> None:
    ctx = make_ctx(ProbeBackend({}), budget=Budget(max_calls=2))
    scores = await SelfEval()(PROBLEM, [cand(f"c{i}") for i in range(4)], ctx)
    exhausted = [s for s in scores if s.details.get("budget_exhausted")]
    assert len(exhausted) == 2 and all(s.value == 0.5 and s.details["fallback"] for s in exhausted)
    assert ctx.meter.exhausted and ctx.meter.usage.calls == 2


async def test_trace_nests_one_backend_span_per_probe_in_the_verifier_span() -> None:
    ctx = make_ctx(FakeBackend())
    await SelfEval()(PROBLEM, [cand("a"), cand("b"), cand("", error="x")], ctx)
    (span,) = ctx.trace.root.children
    assert span.kind == "verifier" and span.name == "self_eval"
    assert [c.kind for c in span.children] == ["backend", "backend"]
    assert all(c.completion_tokens == 1 and c.attrs["max_tokens"] == 1 for c in span.children)


# --- end to end -------------------------------------------------------------------------------


async def test_best_of_n_with_self_eval_picks_the_most_confident_candidate() -> None:
    tops = {
        "boxed{41}": {"Yes": 0.2, "No": 0.7},
        "boxed{42}": {" Yes": 0.6, "yes": 0.2, " No": 0.1},
        "boxed{7}": {"No": 0.5, "Yes": 0.4},
    }
    backend = ProbeBackend(tops, answers=["41", "7", "42", "41"])
    spec = {"strategy": "best_of_n", "n": 4, "verifier": "self_eval"}
    result = await Orchestrator([backend]).run("What is 6 * 7?", spec)
    assert result.answer == "42" and not result.budget_exhausted
    scores = [sc.scores[0].value for sc in result.candidates]
    assert scores == pytest.approx([0.2 / 0.9, 0.4 / 0.9, 0.8 / 0.9, 0.2 / 0.9])
    assert result.usage.calls == 5
    assert result.details["best_score"] == pytest.approx(0.8 / 0.9)
    strategy_span = result.trace["children"][0] if result.trace else {}
    kinds = [c["kind"] for c in strategy_span["children"]]
    assert kinds == ["backend", "verifier"]
    verifier_span = strategy_span["children"][1]
    assert len(verifier_span["children"]) == 4
    assert sum(c["completion_tokens"] for c in verifier_span["children"]) == 4


async def test_best_of_n_with_self_eval_under_an_exhausted_budget_does_not_crash() -> None:
    spec = {"strategy": "best_of_n", "n": 4, "verifier": {"verifier": "self_eval"}}
    result = await Orchestrator([FakeBackend()]).run("q", spec, Budget(max_calls=3))
    assert result.budget_exhausted is True and result.candidate is not None
    flags = [sc.scores[0].details.get("budget_exhausted", False) for sc in result.candidates]
    assert flags == [False, False, True, True]
    assert result.usage.calls == 3


def test_registered_and_described() -> None:
    v = build_verifier({"verifier": "self_eval", "mode": "capability"})
    assert isinstance(v, SelfEval)
    assert v.describe() == {"verifier": "self_eval", "mode": "capability"}
    assert v.config.probe_question == DEFAULT_QUESTIONS["capability"]


async def test_orchestrator_refuses_a_probe_backend_without_logprobs_before_any_call() -> None:
    policy = FakeBackend(name="policy")
    judge = FakeBackend(name="judge", capabilities=Capabilities())
    orch = Orchestrator([policy, judge], default_backend="policy")
    spec = {
        "strategy": "best_of_n",
        "n": 2,
        "verifier": {"verifier": "self_eval", "backend": "judge"},
    }
    with pytest.raises(CapabilityError, match=r"self_eval.*logprobs.*judge"):
        await orch.run("What is 2 + 2?", spec)
    assert policy.calls == 0 and judge.calls == 0


async def test_combinator_children_backend_needs_are_checked_too() -> None:
    policy = FakeBackend(name="policy")
    judge = FakeBackend(name="judge", capabilities=Capabilities())
    orch = Orchestrator([policy, judge], default_backend="policy")
    inner = [{"verifier": "majority_vote"}, {"verifier": "self_eval", "backend": "judge"}]
    spec = {"strategy": "best_of_n", "n": 2, "verifier": {"verifier": "all_of", "verifiers": inner}}
    with pytest.raises(CapabilityError, match="logprobs"):
        await orch.run("What is 2 + 2?", spec)
    assert policy.calls == 0
