"""Tests for ``sift`` (SIFT, Zeng et al. 2025): the pure helpers, then runs on a scripted fake."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import pytest

import strategies.sift  # noqa: F401  (registers "sift")
from orchestrator.backends.base import Capabilities, Generation, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, Problem, Result
from strategies import build_strategy
from strategies import sift_prompts as prompts
from strategies.sift import MAX_CALLS, Sift, agree, best_label, clean_sticker

QUESTION = "What is 6*7?"

# Tagged templates: the fake backend reads the tag to know which step a request is.
TAGGED = {
    "q2p_prompt": "[Q2P] {question}",
    "sticker_prompt": "[STICKER] {question}",
    "a2p_prompt": "[A2P] {sticker}",
    "q_a2p_prompt": "[QA2P] {question} || {sticker}",
    "forward_prompt": "[FORWARD] {question} || {sticker}",
    "inverse_prompt": "[INVERSE] {prediction}",
}


def spec(**kw: Any) -> dict[str, Any]:
    return {"strategy": "sift", **TAGGED, **kw}


def tag(request: GenerationRequest) -> str:
    content = (request.messages or [])[-1].content
    m = re.match(r"\[(\w+)\]", content)
    return m.group(1) if m else "?"


def sift_script(answers: Mapping[str, str]) -> Any:
    """A script answering each step; ``answers`` maps "1.a2p", "2.q_a2p", ..., "q2p" to answers.

    Stickers: S1 from [STICKER]; forward turns S1 into S2 and the inverse Sticker into S3.
    """

    def script(request: GenerationRequest, index: int) -> str:
        kind = tag(request)
        body = (request.messages or [])[-1].content
        if kind == "STICKER":
            return "Sure, here it is.\nConditions:\n1. fact-S1\nQuestion: q"
        if kind == "FORWARD":
            which = "S3" if "fact-INV" in body else "S2"
            return f"Conditions:\n1. fact-{which}\nQuestion: q"
        if kind == "INVERSE":
            return "Conditions:\n1. fact-INV\nQuestion: q"
        if kind == "Q2P":
            key = "q2p"
        else:
            m = re.search(r"fact-S(\d)", body)
            assert m is not None, body
            key = f"{m.group(1)}.{'a2p' if kind == 'A2P' else 'q_a2p'}"
        ans = answers.get(key)
        return f"solution {key}: so \\boxed{{{ans}}}" if ans else "I cannot tell."

    return script


def backend_for(answers: Mapping[str, str], **kw: Any) -> FakeBackend:
    return FakeBackend(script=sift_script(answers), **kw)


STAGE1 = {"1.a2p": "42", "1.q_a2p": "42.0", "q2p": "7"}
STAGE2 = {"1.a2p": "1", "1.q_a2p": "2", "2.a2p": "42", "2.q_a2p": "42", "q2p": "7"}
STAGE3 = {**STAGE2, "2.a2p": "3", "3.a2p": "1/2", "3.q_a2p": "0.5"}
NONE = {**STAGE3, "3.a2p": "5"}


def spans(node: dict[str, Any], name: str | None = None, kind: str | None = None) -> list[Any]:
    own = [node] if (name is None or node["name"] == name) and kind in (None, node["kind"]) else []
    return own + [s for c in node.get("children", []) for s in spans(c, name, kind)]


async def run(backend: FakeBackend, s: dict[str, Any], budget: Budget | None = None) -> Result:
    return await Orchestrator([backend]).run(QUESTION, s, budget)


# --- pure helpers ------------------------------------------------------------------------------


def test_render_fills_placeholders_in_one_pass_and_keeps_other_braces() -> None:
    out = prompts.render("Q: {question} S: {sticker} \\boxed{} {x}", question="a {sticker} b")
    assert out == "Q: a {sticker} b S: {sticker} \\boxed{} {x}"
    assert prompts.render("{prediction}", prediction="p") == "p"


def test_missing_placeholders() -> None:
    assert prompts.missing_placeholders("{question} {sticker}", ("question", "sticker")) == []
    assert prompts.missing_placeholders("{question}", ("question", "sticker")) == ["{sticker}"]


def test_default_templates_have_their_placeholders() -> None:
    for name, needed in prompts.REQUIRED.items():
        assert prompts.missing_placeholders(getattr(Sift().config, name), needed) == []
    assert "{question}" not in prompts.A2P  # a2p sees the Sticker alone
    for t in (prompts.Q2P, prompts.A2P, prompts.Q_A2P):
        assert t.endswith(prompts.INSTRUCTION) and "\\boxed{}" in t


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Conditions:\n1. a\nQuestion: b \n", "Conditions:\n1. a\nQuestion: b"),
        ("Here is the improved Sticker:\nConditions:\n1. a", "Conditions:\n1. a"),
        ("<think>Conditions: guess</think>\n**Conditions:**\n1. a", "**Conditions:**\n1. a"),
        ("Draft\nConditions:\n1. old\nBetter:\nconditions:\n1. new", "conditions:\n1. new"),
        ("1. a\n2. b\nQuestion: c", "1. a\n2. b\nQuestion: c"),
        ("The conditions: inline", "The conditions: inline"),
        ("  \n", None),
        ("<think>long</think>   ", None),
    ],
)
def test_clean_sticker(text: str, expected: str | None) -> None:
    assert clean_sticker(text) == expected


def cand(answer: str | None) -> Candidate:
    return Candidate(text=f"... {answer}", answer=answer)


def test_agree_compares_normalised_answers() -> None:
    assert agree(cand("0.5"), cand("1/2")) and agree(cand("42"), cand("42.0"))
    assert not agree(cand("42"), cand("41"))
    assert not agree(cand(None), cand(None)) and not agree(cand("1"), None)
    assert not agree(None, None)


def test_best_label_prefers_answered_then_fallback_then_later_stages_then_q_a2p() -> None:
    assert best_label({}) is None
    preds = {"stage1.a2p": cand("1"), "stage1.q_a2p": cand("2"), "stage2.a2p": cand("3")}
    assert best_label(preds) == "stage2.a2p"
    assert best_label({**preds, "stage2.q_a2p": cand("4")}) == "stage2.q_a2p"
    assert best_label({**preds, "fallback": cand("9")}) == "fallback"
    assert best_label({**preds, "fallback": cand(None), "stage3.q_a2p": cand(None)}) == (
        "stage2.a2p"
    )
    assert best_label({"stage1.a2p": cand(None), "stage1.q_a2p": cand(None)}) == "stage1.q_a2p"


# --- config ------------------------------------------------------------------------------------


def test_config_defaults_and_describe() -> None:
    cfg = Sift().config
    assert (cfg.temperature, cfg.fallback, cfg.sticker_max_tokens) == (0.0, "lazy", None)
    assert cfg.sticker_prompt == prompts.STICKER and cfg.inverse_prompt == prompts.INVERSE
    assert Sift().describe() == {"strategy": "sift"}
    s = {"strategy": "sift", "fallback": "eager", "a2p_prompt": "Facts: {sticker}"}
    assert build_strategy(s).describe() == s


@pytest.mark.parametrize(
    ("field", "value", "missing"),
    [
        ("a2p_prompt", "Solve it.", "{sticker}"),
        ("q_a2p_prompt", "{question} only", "{sticker}"),
        ("forward_prompt", "{sticker}", "{question}"),
        ("inverse_prompt", "{question}", "{prediction}"),
    ],
)
def test_template_without_its_placeholder_is_a_config_error(
    field: str, value: str, missing: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy({"strategy": "sift", field: value})
    msg = str(info.value)
    assert f"{field}: " in msg and missing in msg and "strategy 'sift'" in msg


def test_bad_fallback_mode() -> None:
    with pytest.raises(ConfigError, match="fallback"):
        build_strategy({"strategy": "sift", "fallback": "sometimes"})


# --- the procedure -----------------------------------------------------------------------------


async def test_stage1_consensus_lazy_costs_three_calls() -> None:
    backend = backend_for(STAGE1)
    result = await run(backend, spec())
    assert result.answer == "42.0" and result.details["stage"] == 1
    assert result.details["picked"] == "stage1.q_a2p"
    assert backend.calls == 3 == result.details["calls"] == result.usage.calls
    assert [tag(r) for r in backend.requests] == ["STICKER", "A2P", "QA2P"]
    assert all(r.temperature == 0.0 and r.n == 1 for r in backend.requests)
    assert result.details["stickers"] == {"stage1": "Conditions:\n1. fact-S1\nQuestion: q"}
    assert result.details["answers"] == {"stage1.a2p": "42", "stage1.q_a2p": "42.0"}
    assert result.details["fallback_mode"] == "lazy" and not result.budget_exhausted
    assert result.candidate is not None and result.candidate.text.startswith("solution 1.q_a2p")


async def test_stage1_consensus_eager_also_computes_p_q() -> None:
    backend = backend_for(STAGE1)
    result = await run(backend, spec(fallback="eager"))
    assert result.answer == "42.0" and result.details["stage"] == 1
    assert backend.calls == 4 and sorted(tag(r) for r in backend.requests) == [
        "A2P",
        "Q2P",
        "QA2P",
        "STICKER",
    ]
    assert result.details["answers"]["fallback"] == "7"


async def test_stage2_consensus() -> None:
    backend = backend_for(STAGE2)
    result = await run(backend, spec())
    assert result.answer == "42" and result.details["stage"] == 2
    assert backend.calls == 6
    assert [tag(r) for r in backend.requests[3:]] == ["FORWARD", "A2P", "QA2P"]
    forward = (backend.requests[3].messages or [])[-1].content
    assert forward == f"[FORWARD] {QUESTION} || Conditions:\n1. fact-S1\nQuestion: q"
    assert set(result.details["stickers"]) == {"stage1", "stage2"}
    assert result.details["answers"]["stage1.a2p"] == "1"
    assert result.details["answers"]["stage2.q_a2p"] == "42"


async def test_stage3_consensus_uses_the_inverse_of_the_stage2_prediction() -> None:
    backend = backend_for(STAGE3)
    result = await run(backend, spec())
    assert result.answer == "0.5" and result.details["stage"] == 3
    assert backend.calls == 10
    assert [tag(r) for r in backend.requests[6:]] == ["INVERSE", "FORWARD", "A2P", "QA2P"]
    inverse = (backend.requests[6].messages or [])[-1].content
    assert inverse == "[INVERSE] solution 2.q_a2p: so \\boxed{42}"
    assert "fact-INV" in (backend.requests[7].messages or [])[-1].content
    stickers = result.details["stickers"]
    assert list(stickers) == ["stage1", "stage2", "stage3_inverse", "stage3"]
    assert stickers["stage3"] == "Conditions:\n1. fact-S3\nQuestion: q"


@pytest.mark.parametrize("mode", ["lazy", "eager"])
async def test_no_consensus_falls_back_to_p_q(mode: str) -> None:
    backend = backend_for(NONE)
    result = await run(backend, spec(fallback=mode))
    assert result.answer == "7" and result.details["stage"] == "fallback"
    assert result.details["picked"] == "fallback"
    assert backend.calls == MAX_CALLS == 11
    if mode == "lazy":
        assert tag(backend.requests[-1]) == "Q2P"
    assert not result.budget_exhausted


@pytest.mark.parametrize("mode", ["lazy", "eager"])
@pytest.mark.parametrize("answers", [STAGE1, STAGE2, STAGE3, NONE, {}])
@pytest.mark.parametrize("fail", [(), (1,), (0, 4), (2, 5, 8)])
async def test_never_more_than_eleven_calls(
    mode: str, answers: dict[str, str], fail: tuple[int, ...]
) -> None:
    backend = backend_for(answers, fail_calls=fail)
    result = await run(backend, spec(fallback=mode))
    assert backend.calls <= MAX_CALLS and result.details["calls"] == backend.calls
    assert not result.budget_exhausted


async def test_trace_has_a_span_per_stage_with_its_sticker() -> None:
    result = await run(backend_for(NONE), spec())
    assert result.trace is not None
    (sift,) = spans(result.trace, "sift", "strategy")
    stages = [c for c in sift["children"] if c["kind"] == "step"]
    assert [s["name"] for s in stages] == ["stage1", "stage2", "stage3", "fallback"]
    for n, s in enumerate(stages[:3], start=1):
        assert s["attrs"]["sticker"] == f"Conditions:\n1. fact-S{n}\nQuestion: q"
        assert s["attrs"]["consensus"] is False
    assert stages[0]["attrs"]["a2p"] == "1" and stages[0]["attrs"]["q_a2p"] == "2"
    assert [c["name"] for c in stages[2]["children"]] == ["inverse", "forward", "a2p", "q_a2p"]
    assert stages[2]["children"][0]["attrs"]["sticker"] == "Conditions:\n1. fact-INV\nQuestion: q"
    assert stages[3]["attrs"] == {"mode": "lazy", "answer": "7"}
    assert len(spans(result.trace, kind="backend")) == 11
    assert sift["attrs"]["stage"] == "fallback" and "stickers" in sift["attrs"]


# --- prompts -----------------------------------------------------------------------------------


async def test_default_prompts_are_used() -> None:
    def script(request: GenerationRequest, index: int) -> str:
        content = (request.messages or [])[-1].content
        if "write its Sticker" in content:
            return "Conditions:\n1. six times seven\nQuestion: the product"
        return "So \\boxed{42}."

    backend = FakeBackend(script=script)
    problem = Problem(question=QUESTION, system_prompt="Be careful.")
    result = await Orchestrator([backend]).run(problem, "sift")
    assert result.answer == "42" and result.details["stage"] == 1
    sticker = "Conditions:\n1. six times seven\nQuestion: the product"
    texts = [(r.messages or [])[-1].content for r in backend.requests]
    assert texts == [
        prompts.render(prompts.STICKER, question=QUESTION),
        prompts.render(prompts.A2P, sticker=sticker),
        prompts.render(prompts.Q_A2P, question=QUESTION, sticker=sticker),
    ]
    assert QUESTION not in texts[1] and sticker in texts[1] and sticker in texts[2]
    assert all((r.messages or [])[0].content == "Be careful." for r in backend.requests)


async def test_sticker_calls_have_their_own_max_tokens_and_no_stop() -> None:
    backend = backend_for(STAGE2)
    await run(backend, spec(max_tokens=300, sticker_max_tokens=100, stop=["\n\n\n"]))
    for r in backend.requests:
        sticker_call = tag(r) in ("STICKER", "FORWARD", "INVERSE")
        assert r.max_tokens == (100 if sticker_call else 300)
        assert r.stop == (None if sticker_call else ["\n\n\n"])


# --- failures, budget, capabilities ------------------------------------------------------------


async def test_failed_sticker_goes_straight_to_the_fallback() -> None:
    backend = backend_for(STAGE1, fail_calls=[0])
    result = await run(backend, spec())
    assert backend.calls == 2 and tag(backend.requests[1]) == "Q2P"
    assert result.answer == "7" and result.details["stage"] == "fallback"
    assert "injected failure" in result.details["error"]
    assert result.details["stickers"] == {}


async def test_failed_prediction_is_skipped_and_the_next_stage_runs() -> None:
    answers = {"1.a2p": "42", "1.q_a2p": "42", "2.a2p": "42", "2.q_a2p": "42"}
    backend = backend_for(answers, fail_calls=[2])  # stage 1's q_a2p
    result = await run(backend, spec())
    assert result.details["stage"] == 2 and result.answer == "42"
    assert "stage1.q_a2p" not in result.details["answers"]


async def test_backend_returning_nothing_gives_a_clean_no_answer() -> None:
    backend = backend_for(STAGE1, short_n=0)
    result = await run(backend, spec())
    assert result.answer is None and result.candidate is None
    assert backend.calls == 2 and result.details["stage"] == "fallback"
    assert result.details["picked"] is None and not result.budget_exhausted


@pytest.mark.parametrize(
    ("max_calls", "picked", "answer"),
    [(1, None, None), (3, "stage1.q_a2p", "2"), (4, "stage1.q_a2p", "2"), (5, "stage2.a2p", "3")],
)
async def test_budget_exhaustion_returns_the_best_prediction_so_far(
    max_calls: int, picked: str | None, answer: str | None
) -> None:
    backend = backend_for(STAGE3)
    result = await run(backend, spec(), Budget(max_calls=max_calls))
    assert result.budget_exhausted is True
    assert backend.calls == max_calls and result.details["stage"] is None
    assert result.details["picked"] == picked and result.answer == answer


async def test_budget_exhaustion_in_eager_mode_returns_p_q() -> None:
    backend = backend_for(NONE)
    result = await run(backend, spec(fallback="eager"), Budget(max_calls=5))
    assert result.budget_exhausted is True and backend.calls == 5
    assert result.details["picked"] == "fallback" and result.answer == "7"


async def test_completion_token_budget_ends_cleanly() -> None:
    backend = backend_for(NONE)
    result = await run(backend, spec(), Budget(max_completion_tokens=30))
    assert result.budget_exhausted is True and result.usage.completion_tokens <= 30
    assert backend.calls < MAX_CALLS


async def test_runs_on_a_backend_without_any_capability() -> None:
    assert Sift().backend_needs() == Capabilities()
    backend = backend_for(STAGE1, capabilities=Capabilities())
    result = await run(backend, spec())
    assert result.answer == "42.0" and backend.calls == 3


# --- concurrency and composition ---------------------------------------------------------------


class InFlight(FakeBackend):
    """Records which steps were in flight together."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(latency=0.02, **kw)
        self.active: set[str] = set()
        self.overlaps: set[frozenset[str]] = set()

    async def generate(self, request: GenerationRequest) -> Generation:
        name = tag(request)
        self.active.add(name)
        if len(self.active) > 1:
            self.overlaps.add(frozenset(self.active))
        try:
            return await super().generate(request)
        finally:
            self.active.discard(name)


async def test_the_pair_runs_in_parallel_and_eager_p_q_overlaps_the_sticker() -> None:
    lazy = InFlight(script=sift_script(STAGE1))
    await run(lazy, spec())
    assert lazy.overlaps == {frozenset({"A2P", "QA2P"})}
    eager = InFlight(script=sift_script(STAGE1))
    await run(eager, spec(fallback="eager"))
    assert frozenset({"STICKER", "Q2P"}) in eager.overlaps


async def test_cancellation_propagates() -> None:
    backend = backend_for(NONE, latency=0.05)
    task = asyncio.create_task(run(backend, spec()))
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_one_instance_serves_concurrent_runs() -> None:
    strat = build_strategy(spec())
    orch_a, orch_b = Orchestrator([backend_for(STAGE1)]), Orchestrator([backend_for(NONE)])
    a, b = await asyncio.gather(orch_a.run(QUESTION, strat), orch_b.run(QUESTION, strat))
    assert (a.answer, a.details["stage"]) == ("42.0", 1)
    assert (b.answer, b.details["stage"]) == ("7", "fallback")


async def test_sift_inside_self_consistency() -> None:
    def script(request: GenerationRequest, index: int) -> str:
        if tag(request) == "STICKER":
            return "Conditions:\n1. fact-S1\nQuestion: q"
        return "So \\boxed{41}." if index == 2 else "So \\boxed{42}."

    backend = FakeBackend(script=script)
    s = {
        "strategy": "self_consistency",
        "n": 3,
        "inner": {"strategy": "sift", "temperature": 0.7, **TAGGED},
    }
    result = await Orchestrator([backend]).run(QUESTION, s)
    assert result.answer == "42" and result.details["votes"] == {"42": 2.0, "41": 1.0}
    assert backend.calls == 9 and all(r.temperature == 0.7 for r in backend.requests)
    assert result.trace is not None
    children = spans(result.trace, "sift", "strategy")
    assert len(children) == 3 and all(c["attrs"]["stage"] == 1 for c in children)
