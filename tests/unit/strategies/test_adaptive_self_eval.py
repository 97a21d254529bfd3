"""Tests for ``adaptive_self_eval``: the schedules and pruning math on hand-made inputs, and both
modes on a scripted FakeBackend whose self-evaluation probes return known scores."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any

import pytest

import strategies.adaptive_self_eval  # noqa: F401  (registers the strategy)
from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, Result, TokenLogprob
from strategies import build_strategy
from strategies._self_eval_helpers import (
    batch_sizes,
    batch_temperature,
    estimate_full_tokens,
    joined,
    keep_count,
    pick_best,
    top_indices,
    without_partial_answers,
)
from strategies.adaptive_self_eval import AdaptiveSelfEval
from verifiers.self_eval import DEFAULT_QUESTIONS

QUESTION = "What is 6*7?"
CONF = re.compile(r"conf=([0-9.]+)")
PREFIX_ID = re.compile(r"^p(\d+) ")


class ProbeScripted(FakeBackend):
    """A FakeBackend whose one-token probes read the last ``conf=X`` in the probed text.

    The probe's top logprobs are ``{"No": log X, "Yes": log(1 - X)}``, so the capability score
    P(No) / (P(Yes) + P(No)) is exactly X (0.5 without a marker). Samples follow ``answers`` and
    ``confs`` by sample index; a continued prefix ``pI ...`` continues with ``finals[I]``.
    """

    def __init__(
        self,
        confs: Sequence[float],
        answers: Sequence[str] = ("42",),
        finals: Sequence[float] = (),
        short: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(script=self._text, token_logprobs=self.logprobs_for, **kwargs)
        self.confs, self.plan, self.finals, self.short = confs, answers, finals, set(short)

    def probes(self) -> list[GenerationRequest]:
        return [r for r in self.requests if is_probe(r)]

    def samples(self) -> list[GenerationRequest]:
        return [r for r in self.requests if r not in self.probes() and not r.continue_final]

    def continuations(self) -> list[GenerationRequest]:
        return [r for r in self.requests if r.continue_final and r not in self.probes()]

    def _text(self, request: GenerationRequest, i: int) -> str:
        messages = request.messages or []
        if is_probe(request):
            return "No" if probe_p(request) >= 0.5 else "Yes"
        if request.continue_final:
            k = int(PREFIX_ID.match(messages[-1].content).group(1))  # type: ignore[union-attr]
            ans = self.plan[k % len(self.plan)]
            return f"\nthen conf={self.finals[k]} so the answer is \\boxed{{{ans}}}"
        ans = self.plan[i % len(self.plan)]
        if i in self.short:
            return f"p{i} conf={self.confs[i]} \\boxed{{{ans}}}"
        return f"p{i} conf={self.confs[i]} step step step The answer is \\boxed{{{ans}}}"

    @staticmethod
    def logprobs_for(
        request: GenerationRequest, i: int, default: list[TokenLogprob]
    ) -> list[TokenLogprob]:
        if not is_probe(request):
            return default
        p = probe_p(request)
        top = {"No": math.log(p), "Yes": math.log(1.0 - p)}
        (token,) = (t.token for t in default)
        return [TokenLogprob(token=token, logprob=top[token], top=top)]


def is_probe(request: GenerationRequest) -> bool:
    return request.max_tokens == 1 and bool(request.top_logprobs)


def probe_p(request: GenerationRequest) -> float:
    found = CONF.findall((request.messages or [])[-1].content)
    return float(found[-1]) if found else 0.5


async def run(backend: FakeBackend, budget: Budget | None = None, **spec: Any) -> Result:
    return await Orchestrator([backend]).run(
        QUESTION, {"strategy": "adaptive_self_eval", **spec}, budget
    )


def steps(result: Result) -> list[dict[str, Any]]:
    (strategy,) = result.trace["children"]  # type: ignore[index]
    return [s for s in strategy.get("children", []) if s["kind"] == "step"]


# --- pure math --------------------------------------------------------------------------------


def test_batch_sizes_double_up_to_n_max() -> None:
    assert batch_sizes(16) == [1, 1, 2, 4, 8]
    assert batch_sizes(1) == [1]
    assert batch_sizes(2) == [1, 1]
    assert batch_sizes(5) == [1, 1, 2, 1]
    assert batch_sizes(10) == [1, 1, 2, 4, 2]
    assert all(sum(batch_sizes(n)) == n for n in range(1, 100))


def test_batch_temperature_schedule() -> None:
    default = AdaptiveSelfEval().config.schedule
    assert default == [0.0, 0.7]
    assert AdaptiveSelfEval(temperature=0.9).config.schedule == [0.0, 0.9]
    assert AdaptiveSelfEval(temperatures=[0.3, 1.0]).config.schedule == [0.3, 1.0]
    assert [batch_temperature(b, default) for b in range(5)] == [0.0, 0.7, 0.7, 0.7, 0.7]
    annealed = [0.2, 0.5, 0.9]
    assert [batch_temperature(b, annealed) for b in range(5)] == [0.2, 0.5, 0.9, 0.9, 0.9]
    assert batch_temperature(3, [1.0]) == 1.0


@pytest.mark.parametrize(
    ("live", "fraction", "kept"),
    [(8, 0.25, 2), (8, 0.5, 4), (8, 1.0, 8), (6, 0.25, 2), (3, 0.5, 2), (10, 0.3, 3), (1, 0.1, 1)],
)
def test_keep_count(live: int, fraction: float, kept: int) -> None:
    assert keep_count(live, fraction) == kept


def test_keep_count_of_nothing() -> None:
    assert keep_count(0, 0.5) == 0


def test_top_indices() -> None:
    assert top_indices([0.1, 0.9, 0.5, 0.9], 2) == [1, 3]
    assert top_indices([0.1, 0.9, 0.5, 0.9], 3) == [1, 2, 3]
    assert top_indices([0.5, 0.5, 0.5], 1) == [0]  # ties towards the earlier
    assert top_indices([0.3], 5) == [0]
    assert top_indices([], 0) == []


def test_estimate_full_tokens() -> None:
    # 3 finished samples of 10 tokens on average; 2 never drawn count 10 each
    assert estimate_full_tokens(30, 3, [0, 0], 100) == 50
    # nothing finished: each sample is estimated at the fallback (max_tokens)
    assert estimate_full_tokens(0, 0, [0, 0], 100) == 200
    # a cut sample longer than the mean counts its own tokens
    assert estimate_full_tokens(20, 2, [15, 4], 50) == 45
    assert estimate_full_tokens(7, 1, [], 50) == 7


def test_pick_best() -> None:
    a = Candidate(text="a", answer="1")
    b = Candidate(text="b", answer=None)
    c = Candidate(text="c", answer="2")
    failed = Candidate(text="", error="boom", answer="9")
    assert pick_best([a, b, c], [0.2, 0.9, 0.5]) == 2  # an answer beats a higher score
    assert pick_best([a, c], [0.5, 0.5]) == 0  # ties towards the earlier
    assert pick_best([failed, a], [1.0, 0.1]) == 1
    assert pick_best([a, b, c], [0.2, 0.9, 0.5], among=[0, 1]) == 0
    assert pick_best([failed], [1.0]) is None
    assert pick_best([], []) is None


def test_joined_extracts_the_answer_from_the_whole_text() -> None:
    prefix = Candidate(text="Half: 21, doubled", tokens=3, finish_reason="length", answer=None)
    rest = Candidate(text=" is \\boxed{42}.", tokens=3, finish_reason="stop", model="m")
    whole = joined(prefix, rest, "auto")
    assert whole.text == "Half: 21, doubled is \\boxed{42}."
    assert (whole.tokens, whole.finish_reason, whole.answer, whole.model) == (6, "stop", "42", "m")


def test_without_partial_answers_keeps_finished_and_kept_ones() -> None:
    cut = Candidate(text="Attempt 1: so", answer="1", finish_reason="length")
    whole = Candidate(text="It is \\boxed{4}", answer="4", finish_reason="stop")
    out = without_partial_answers([cut, whole, cut], keep={2})
    assert [c.answer for c in out] == [None, "4", "1"]


# --- adaptive sampling ------------------------------------------------------------------------


async def test_adaptive_stops_once_the_best_score_reaches_the_threshold() -> None:
    backend = ProbeScripted(confs=[0.3, 0.5, 0.9, 0.6] + [0.1] * 12, answers=["1", "2", "3", "4"])
    result = await run(backend)
    d = result.details
    assert result.answer == "3" and result.candidate is not None
    assert result.candidate.text.startswith("p2 ")
    assert d["stop_reason"] == "threshold" and d["samples_used"] == 4
    assert d["best_score"] == pytest.approx(0.9) and d["threshold"] == 0.8
    assert [sc.score for sc in result.candidates] == pytest.approx([0.3, 0.5, 0.9, 0.6])
    assert [(r.n, r.temperature) for r in backend.samples()] == [(1, 0.0), (1, 0.7), (2, 0.7)]
    probes = backend.probes()
    assert len(probes) == 4 and all(p.continue_final and p.temperature == 0.0 for p in probes)
    assert DEFAULT_QUESTIONS["capability"] in (probes[0].messages or [])[-1].content
    sample_tokens = sum(sc.candidate.tokens for sc in result.candidates)
    assert d["probe_tokens"] == 4 and d["tokens_used"] == sample_tokens + 4
    assert d["full_tokens_estimate"] == sample_tokens * 4  # 16 samples at the mean length
    assert d["tokens_saved_vs_full"] == sample_tokens * 3 - 4
    assert result.usage.completion_tokens == d["tokens_used"] and result.usage.calls == 7
    spans = steps(result)
    assert [s["name"] for s in spans] == ["batch", "probe"] * 3
    assert [s["attrs"]["size"] for s in spans[::2]] == [1, 1, 2]
    assert [s["attrs"]["temperature"] for s in spans[::2]] == [0.0, 0.7, 0.7]
    assert spans[5]["attrs"]["scores"] == pytest.approx([0.9, 0.6])
    (strategy,) = result.trace["children"]  # type: ignore[index]
    assert strategy["attrs"]["stop_reason"] == "threshold"
    assert strategy["attrs"]["tokens_saved_vs_full"] == d["tokens_saved_vs_full"]


async def test_adaptive_threshold_is_tunable() -> None:
    backend = ProbeScripted(confs=[0.3, 0.5, 0.9, 0.6], answers=["1", "2", "3", "4"])
    result = await run(backend, threshold=0.45)
    assert result.answer == "2" and result.details["samples_used"] == 2


async def test_adaptive_draws_n_max_when_never_confident() -> None:
    backend = ProbeScripted(confs=[0.3, 0.6, 0.2, 0.4], answers=["1", "2", "3", "4"])
    result = await run(backend, n_max=4, temperatures=[0.2, 0.5, 0.9])
    d = result.details
    assert d["stop_reason"] == "n_max" and d["samples_used"] == 4
    assert result.answer == "2" and d["best_score"] == pytest.approx(0.6)
    assert [r.temperature for r in backend.samples()] == [0.2, 0.5, 0.9]
    assert d["tokens_saved_vs_full"] == -4  # every sample drawn, plus 4 probe tokens
    assert not result.budget_exhausted


async def test_adaptive_over_a_child_strategy_skips_failed_runs() -> None:
    backend = ProbeScripted(confs=[0.9, 0.9, 0.9], answers=["5", "6", "7"], fail_calls=[0])
    strat = build_strategy({"strategy": "adaptive_self_eval", "inner": "single", "n_max": 4})
    assert [c.name for c in strat.children()] == ["single"]
    result = await Orchestrator([backend]).run(QUESTION, strat)
    d = result.details
    assert d["failed"] == 1 and d["samples_used"] == 2 and d["stop_reason"] == "threshold"
    assert result.candidates[0].candidate.failed and result.candidates[0].score == 0.0
    assert result.answer == "5"  # the first successful child run (sample index 0)
    assert steps(result)[0]["attrs"]["temperature"] is None


async def test_adaptive_tops_up_a_short_backend() -> None:
    backend = ProbeScripted(confs=[0.1] * 4, answers=["1", "2", "3", "4"], short_n=1)
    result = await run(backend, n_max=4)
    assert result.details["samples_used"] == 4 and len(result.candidates) == 4


async def test_adaptive_stops_on_a_backend_error() -> None:
    backend = ProbeScripted(confs=[0.1] * 4, fail_calls=[2])  # calls: sample, probe, sample
    result = await run(backend, n_max=4)
    d = result.details
    assert d["stop_reason"] == "error" and "injected failure" in d["error"]
    assert d["samples_used"] == 1 and result.answer == "42"


async def test_adaptive_budget_exhaustion_returns_the_best_so_far() -> None:
    backend = ProbeScripted(confs=[0.3, 0.4, 0.9], answers=["1", "2", "3"])
    result = await run(backend, Budget(max_calls=3))  # sample, probe, sample; 2nd probe refused
    d = result.details
    assert result.budget_exhausted and d["stop_reason"] == "budget"
    assert d["samples_used"] == 2 and backend.calls == 3
    assert result.candidates[1].scores[0].details["budget_exhausted"] is True
    assert result.answer == "2"  # the refused probe scores self_eval's fallback 0.5 > 0.3


async def test_adaptive_completion_token_budget() -> None:
    backend = ProbeScripted(confs=[0.1] * 16)
    result = await run(backend, Budget(max_completion_tokens=30))
    assert result.budget_exhausted and result.details["stop_reason"] == "budget"
    assert result.usage.completion_tokens <= 30 and result.answer == "42"


async def test_one_instance_serves_concurrent_runs() -> None:
    strat = AdaptiveSelfEval(n_max=4)
    b1 = ProbeScripted(name="b1", confs=[0.9], answers=["1"])
    b2 = ProbeScripted(name="b2", confs=[0.2, 0.95], answers=["7", "8"])
    r1, r2 = await asyncio.gather(
        Orchestrator([b1]).run(QUESTION, strat), Orchestrator([b2]).run(QUESTION, strat)
    )
    assert (r1.answer, r1.details["samples_used"]) == ("1", 1)
    assert (r2.answer, r2.details["samples_used"]) == ("8", 2)


# --- early pruning ----------------------------------------------------------------------------

PREFIX_CONFS = [0.1, 0.8, 0.3, 0.7, 0.2, 0.9, 0.4, 0.5]
FINALS = [0.5, 0.95, 0.5, 0.85, 0.5, 0.6, 0.5, 0.7]
PRUNE: dict[str, Any] = {"mode": "prune", "prefix_tokens": 2, "max_tokens": 64}


async def test_prune_keeps_the_top_fraction_and_continues_from_the_prefix() -> None:
    backend = ProbeScripted(PREFIX_CONFS, answers=[str(i) for i in range(8)], finals=FINALS)
    result = await run(backend, keep_fraction=0.25, **PRUNE)
    d = result.details
    (first,) = backend.samples()
    assert (first.n, first.max_tokens, first.temperature) == (8, 2, 0.7)
    conts = backend.continuations()
    assert len(conts) == 2
    for req, k in zip(sorted(conts, key=lambda r: str(r.messages)), [1, 5], strict=True):
        last = (req.messages or [])[-1]
        assert last.role == "assistant" and last.content == f"p{k} conf={PREFIX_CONFS[k]}"
        assert (req.n, req.max_tokens) == (1, 62)
    assert result.answer == "1" and result.candidate is not None
    assert result.candidate.text == "p1 conf=0.8\nthen conf=0.95 so the answer is \\boxed{1}"
    assert (d["kept"], d["pruned"], d["completed"], d["samples_used"]) == (2, 6, 2, 8)
    assert d["stop_reason"] == "completed" and d["best_score"] == pytest.approx(0.95)
    assert d["partial_answer"] is False
    assert [len(sc.scores) for sc in result.candidates] == [1, 2, 1, 1, 1, 2, 1, 1]
    pruned = [sc.candidate for i, sc in enumerate(result.candidates) if i not in (1, 5)]
    assert all(c.answer is None and c.finish_reason == "length" for c in pruned)  # partial
    assert result.candidates[5].score == pytest.approx(0.6)
    assert len(backend.probes()) == 8 + 2 and backend.calls == 1 + 8 + 2 + 2
    spans = steps(result)
    assert [s["name"] for s in spans] == ["prefixes", "probe", "continue", "probe"]
    assert spans[1]["attrs"]["kept"] == [1, 5]
    assert spans[1]["attrs"]["pruned"] == [0, 2, 3, 4, 6, 7]
    assert spans[2]["attrs"]["finished"] == [1, 5] and spans[3]["attrs"]["stage"] == "final"
    # tokens: 16 prefix + continuations + 10 probes; the full run: 2 finished, 6 at their mean
    finished = result.candidates[1].candidate.tokens + result.candidates[5].candidate.tokens
    assert d["tokens_used"] == 16 + (finished - 4) + 10
    assert d["full_tokens_estimate"] == round(finished + 6 * finished / 2)
    assert d["tokens_saved_vs_full"] == d["full_tokens_estimate"] - d["tokens_used"]
    assert result.usage.completion_tokens == d["tokens_used"]


@pytest.mark.parametrize(("fraction", "kept"), [(0.25, 2), (0.5, 4), (0.3, 3), (1.0, 8)])
async def test_prune_keeps_exactly_the_fraction(fraction: float, kept: int) -> None:
    backend = ProbeScripted(PREFIX_CONFS, finals=FINALS)
    result = await run(backend, keep_fraction=fraction, **PRUNE)
    expected = top_indices(PREFIX_CONFS, kept)
    assert steps(result)[1]["attrs"]["kept"] == expected
    assert result.details["kept"] == kept and len(backend.continuations()) == kept


async def test_prune_keeps_a_prefix_that_already_finished_without_continuing_it() -> None:
    backend = ProbeScripted([0.9, 0.1, 0.2, 0.3], answers=["5", "6"], finals=[0.5] * 4, short=[0])
    result = await run(backend, n=4, keep_fraction=0.5, **{**PRUNE, "prefix_tokens": 3})
    assert result.candidates[0].candidate.finish_reason == "stop"
    assert len(backend.continuations()) == 1  # only index 3 (0.3) is cut and kept
    assert result.answer == "5" and result.details["completed"] == 2
    assert result.candidates[0].scores[0].value == pytest.approx(0.9)


async def test_prune_budget_exhaustion_returns_the_best_so_far() -> None:
    backend = ProbeScripted(PREFIX_CONFS, answers=[str(i) for i in range(8)], finals=FINALS)
    budget = Budget(max_calls=1 + 8 + 1)  # one of the two continuations is refused
    result = await run(backend, budget, keep_fraction=0.25, **PRUNE)
    d = result.details
    assert result.budget_exhausted and d["stop_reason"] == "budget"
    assert d["completed"] == 1 and backend.calls == 10
    assert result.answer in {"1", "5"} and result.candidate is not None
    assert "\nthen" in result.candidate.text


async def test_prune_budget_gone_before_any_continuation_keeps_the_best_prefix() -> None:
    backend = ProbeScripted(PREFIX_CONFS, finals=FINALS)
    result = await run(backend, Budget(max_calls=1 + 8), keep_fraction=0.25, **PRUNE)
    d = result.details
    assert result.budget_exhausted and d["stop_reason"] == "budget" and d["completed"] == 0
    assert result.candidate is not None and result.candidate.text == "p5 conf=0.9"
    assert result.answer == "0.9" and d["partial_answer"] is True  # best so far, from a prefix
    assert [sc.candidate.answer for sc in result.candidates].count(None) == 7
    assert d["full_tokens_estimate"] == 8 * 64  # nothing finished: max_tokens each


async def test_prune_with_every_prefix_failing() -> None:
    backend = ProbeScripted(PREFIX_CONFS, fail_calls=[0])
    result = await run(backend, **PRUNE)
    assert result.answer is None and result.candidate is None
    assert (
        result.details["stop_reason"] == "error" and "injected failure" in result.details["error"]
    )


# --- capabilities and config ------------------------------------------------------------------


async def test_refuses_a_backend_without_logprobs_before_any_call() -> None:
    backend = ProbeScripted([0.9], capabilities=Capabilities())
    with pytest.raises(CapabilityError) as info:
        await run(backend)
    msg = str(info.value)
    assert "'adaptive_self_eval'" in msg and "logprobs" in msg and "top_logprobs>=20" in msg
    assert backend.calls == 0


async def test_prune_needs_prefix_continuation_but_adaptive_does_not() -> None:
    caps = Capabilities(logprobs=True, top_logprobs=20)
    backend = ProbeScripted(PREFIX_CONFS, finals=FINALS, capabilities=caps)
    with pytest.raises(CapabilityError, match="prefix_continuation"):
        await run(backend, **PRUNE)
    assert backend.calls == 0
    result = await run(backend, n_max=2)
    assert result.answer == "42"
    assert all(not p.continue_final for p in backend.probes())  # the probe asks a new turn


def test_needs() -> None:
    assert AdaptiveSelfEval().backend_needs() == Capabilities(logprobs=True, top_logprobs=20)
    pruning = AdaptiveSelfEval(mode="prune", top_logprobs=5)
    assert pruning.backend_needs() == Capabilities(
        logprobs=True, top_logprobs=5, prefix_continuation=True
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"mode": "prune", "prefix_tokens": 64, "max_tokens": 64}, "prefix_tokens (64)"),
        ({"mode": "prune", "inner": "single"}, "inner works in mode 'adaptive'"),
        ({"temperatures": []}, "temperatures"),
        ({"keep_fraction": 0}, "keep_fraction"),
        ({"mode": "beam"}, "mode"),
        ({"samples": 3}, "samples"),
    ],
)
def test_config_errors(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_strategy({"strategy": "adaptive_self_eval", **spec})


def test_describe_round_trips() -> None:
    spec = {"strategy": "adaptive_self_eval", "mode": "prune", "n": 4, "keep_fraction": 0.25}
    assert build_strategy(spec).describe() == spec
    assert AdaptiveSelfEval().describe() == {"strategy": "adaptive_self_eval"}
