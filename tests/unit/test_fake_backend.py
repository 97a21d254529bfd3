"""Tests for orchestrator.testing.FakeBackend: the scripted, seeded Backend used everywhere."""

from __future__ import annotations

import ast
import asyncio
import math
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.backends.config import BackendConfig
from orchestrator.backends.kinds import create_backend
from orchestrator.errors import BackendError, BackendTimeout, BackendUnavailable, CapabilityError
from orchestrator.registry import backends
from orchestrator.testing import FakeBackend, default_text
from orchestrator.testing.fake_backend import FULL, fake_kind
from orchestrator.types import Message, TokenLogprob


def chat(question: str = "q", n: int = 1, **kw: object) -> GenerationRequest:
    return GenerationRequest(messages=[Message(role="user", content=question)], n=n, **kw)


def texts(gen: object) -> list[str]:
    return [c.text for c in gen.candidates]  # type: ignore[attr-defined]


def test_defaults() -> None:
    b = FakeBackend()
    assert (b.name, b.model, b.kind) == ("fake", "fake-model", "fake")
    assert b.capabilities == FULL
    assert b.capabilities.logprobs and b.capabilities.native_n
    assert b.calls == 0 and b.requests == []


def test_default_text_has_a_boxed_answer() -> None:
    text = default_text("42")
    assert text.endswith("\\boxed{42}.")
    assert len(text.split(" ")) == 16


async def test_generation_shape_and_accounting() -> None:
    b = FakeBackend(prompt_tokens=33)
    gen = await b.generate(chat(n=5))
    assert len(gen.candidates) == 5
    assert gen.prompt_tokens == 33 and gen.calls == 1
    assert gen.completion_tokens == sum(c.tokens for c in gen.candidates)
    for c in gen.candidates:
        assert c.tokens == len(c.text.split(" "))
        assert c.finish_reason == "stop"
        assert (c.model, c.backend) == ("fake-model", "fake")
        assert c.logprobs is None and c.answer is None and not c.failed
    assert b.calls == 1 and b.requests == [chat(n=5)]


async def test_answer_list_is_cycled_across_calls_of_a_prompt() -> None:
    b = FakeBackend(answers=["1", "2", "3"])
    first = await b.generate(chat(n=2))
    second = await b.generate(chat(n=2))
    other = await b.generate(chat("other", n=1))
    assert texts(first) == [default_text("1"), default_text("2")]
    assert texts(second) == [default_text("3"), default_text("1")]
    assert texts(other) == [default_text("1")]  # each prompt has its own position


async def test_answer_distribution_is_respected() -> None:
    b = FakeBackend(answers={"a": 0.8, "b": 0.2}, seed=3)
    gen = await b.generate(chat(n=500))
    counts = Counter(c.text for c in gen.candidates)
    assert set(counts) == {default_text("a"), default_text("b")}
    assert 0.7 < counts[default_text("a")] / 500 < 0.9


async def test_script_gets_request_and_index() -> None:
    seen: list[int] = []

    def script(req: GenerationRequest, i: int) -> str:
        seen.append(i)
        return f"{req.messages[-1].content} #{i}"  # type: ignore[index]

    b = FakeBackend(script=script)
    assert texts(await b.generate(chat("hi", n=2))) == ["hi #0", "hi #1"]
    assert texts(await b.generate(chat("hi", n=1))) == ["hi #2"]
    assert seen == [0, 1, 2]


async def test_max_tokens_truncates_to_words_and_reports_length() -> None:
    b = FakeBackend(answers=["42"])
    (cand,) = (await b.generate(chat(max_tokens=4))).candidates
    assert cand.text == "Let me work this"
    assert cand.tokens == 4 and cand.finish_reason == "length"


async def test_logprobs_and_top_logprobs() -> None:
    b = FakeBackend()
    (plain,) = (await b.generate(chat(logprobs=True))).candidates
    assert plain.logprobs is not None and len(plain.logprobs) == plain.tokens
    assert [t.token for t in plain.logprobs] == plain.text.split(" ")
    assert all(-1.5 <= t.logprob <= 0.0 and t.top is None for t in plain.logprobs)
    mean = plain.mean_logprob()
    assert mean is not None and mean == pytest.approx(
        sum(t.logprob for t in plain.logprobs) / len(plain.logprobs)
    )
    (top,) = (await b.generate(chat(logprobs=True, top_logprobs=3))).candidates
    first = top.logprobs[0]  # type: ignore[index]
    assert first.top == {
        first.token: first.logprob,
        "Yes": first.logprob - 1.0,
        "No": first.logprob - 2.0,
    }
    assert math.isfinite(first.logprob)
    (one,) = (await b.generate(chat(logprobs=True, top_logprobs=1))).candidates
    assert all(t.top == {t.token: t.logprob} for t in one.logprobs or [])  # at most k


async def test_token_logprobs_hook_changes_or_drops_the_default() -> None:
    seen: list[tuple[int, list[str]]] = []

    def flat(req: GenerationRequest, i: int, default: list[TokenLogprob]) -> list[TokenLogprob]:
        seen.append((i, [t.token for t in default]))
        return [t.model_copy(update={"logprob": -0.5}) for t in default]

    b = FakeBackend(answers=["42"], token_logprobs=flat)
    (cand,) = (await b.generate(chat(logprobs=True, max_tokens=3))).candidates
    assert [t.logprob for t in cand.logprobs or []] == [-0.5, -0.5, -0.5]
    assert seen == [(0, ["Let", "me", "work"])]  # the returned tokens, after the cut
    assert (await b.generate(chat())).candidates[0].logprobs is None  # not asked: not called
    assert len(seen) == 1
    dropping = FakeBackend(token_logprobs=lambda req, i, default: None)
    (bare,) = (await dropping.generate(chat(logprobs=True))).candidates
    assert bare.logprobs is None
    wrong = FakeBackend(token_logprobs=lambda req, i, default: default[:1])
    with pytest.raises(ValueError, match="one per token"):
        await wrong.generate(chat(logprobs=True))


async def test_stop_cuts_before_the_first_stop_string() -> None:
    b = FakeBackend(answers=["42"])
    (cand,) = (await b.generate(chat(stop=[" step", " work"]))).candidates
    assert cand.text == "Let me" and cand.tokens == 2 and cand.finish_reason == "stop"
    (late,) = (await b.generate(chat(stop=["boxed"], max_tokens=3))).candidates
    assert late.text == "Let me work" and late.finish_reason == "length"  # the length cut first
    (none,) = (await b.generate(chat(stop=["never there"]))).candidates
    assert none.text == default_text("42")


async def test_undeclared_capabilities_are_refused_before_the_call() -> None:
    b = FakeBackend(capabilities=Capabilities(logprobs=True, top_logprobs=2))
    with pytest.raises(CapabilityError, match="top_logprobs>=5"):
        await b.generate(chat(logprobs=True, top_logprobs=5))
    partial = [Message(role="user", content="q"), Message(role="assistant", content="Let")]
    with pytest.raises(CapabilityError, match="prefix_continuation"):
        await b.generate(GenerationRequest(messages=partial, continue_final=True))
    assert b.calls == 0 and b.requests == []
    bare = FakeBackend(capabilities=Capabilities())
    with pytest.raises(CapabilityError, match=r"'fake'.*logprobs"):
        await bare.generate(chat(logprobs=True))
    assert (await bare.generate(chat())).candidates[0].logprobs is None


async def test_prefix_continuation_returns_only_the_continuation() -> None:
    b = FakeBackend(answers=["42"])
    partial = [Message(role="user", content="q"), Message(role="assistant", content="Let me")]
    request = GenerationRequest(messages=partial, continue_final=True)
    (cand,) = (await b.generate(request)).candidates
    assert "Let me" + cand.text == default_text("42")
    scripted = FakeBackend(script=lambda req, i: " and more")  # already a continuation
    (more,) = (await scripted.generate(request)).candidates
    assert more.text == " and more"


async def test_same_seed_same_output_different_seed_different_output() -> None:
    async def run(seed: int) -> list[list[str]]:
        b = FakeBackend(seed=seed)
        return [texts(await b.generate(chat(q, n=8, logprobs=True))) for q in ("a", "b", "a")]

    assert await run(1) == await run(1)
    assert await run(1) != await run(2)


async def test_output_depends_on_call_order_per_prompt_not_on_interleaving() -> None:
    b1, b2 = FakeBackend(seed=5), FakeBackend(seed=5)
    x1 = await b1.generate(chat("x", n=6))
    y1 = await b1.generate(chat("y", n=6))
    y2 = await b2.generate(chat("y", n=6))
    x2 = await b2.generate(chat("x", n=6))
    assert texts(x1) == texts(x2) and texts(y1) == texts(y2)


async def test_request_seed_changes_the_sample() -> None:
    outs = set()
    for seed in range(6):
        b = FakeBackend()
        gen = await b.generate(chat(n=6, seed=seed, logprobs=True))
        outs.add(tuple(t.logprob for t in gen.candidates[0].logprobs))  # type: ignore[union-attr]
    assert len(outs) == 6


async def test_fail_calls_by_index() -> None:
    b = FakeBackend(name="flaky", fail_calls=[1, 3])
    results = []
    for _ in range(5):
        try:
            await b.generate(chat())
            results.append("ok")
        except BackendUnavailable as exc:
            assert exc.status == 503 and exc.backend == "flaky" and exc.retryable
            assert isinstance(exc, BackendError)
            results.append("fail")
    assert results == ["ok", "fail", "ok", "fail", "ok"]
    assert b.calls == 5


async def test_fail_rate_is_seeded() -> None:
    async def pattern(seed: int) -> list[bool]:
        b = FakeBackend(fail_rate=0.5, seed=seed)
        out = []
        for _ in range(40):
            try:
                await b.generate(chat())
                out.append(True)
            except BackendUnavailable:
                out.append(False)
        return out

    p = await pattern(11)
    assert p == await pattern(11)
    assert 5 < p.count(False) < 35


async def test_short_n_returns_fewer_candidates() -> None:
    b = FakeBackend(short_n=3, answers=["1", "2", "3", "4", "5"])
    first = await b.generate(chat(n=5))
    second = await b.generate(chat(n=5))
    assert len(first.candidates) == 3 and len(second.candidates) == 3
    assert texts(second)[0] == default_text("4")  # continues where the last call stopped
    assert len((await b.generate(chat(n=2))).candidates) == 2


async def test_latency_and_concurrency() -> None:
    b = FakeBackend(latency=0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    gens = await asyncio.gather(*(b.generate(chat(f"q{i}")) for i in range(20)))
    elapsed = loop.time() - t0
    assert 0.04 < elapsed < 0.5  # the 20 calls overlapped
    assert len(gens) == 20 and b.calls == 20


async def test_timeout_and_latency_per_call() -> None:
    b = FakeBackend(name="slow", latency=lambda call: 30.0 if call == 0 else 0.0, timeout=0.05)
    with pytest.raises(BackendTimeout, match=r"\[slow\].*0.05s") as info:
        await asyncio.wait_for(b.generate(chat()), 2.0)
    assert info.value.retryable and isinstance(info.value.__cause__, TimeoutError)
    assert len((await asyncio.wait_for(b.generate(chat()), 1.0)).candidates) == 1


async def test_latency_is_cancellable() -> None:
    b = FakeBackend(latency=30)
    task = asyncio.create_task(b.generate(chat()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)


def test_custom_capabilities_and_pricing() -> None:
    from orchestrator.backends.base import Pricing

    b = FakeBackend(capabilities=Capabilities(), pricing=Pricing(completion=1.0))
    assert not b.capabilities.logprobs
    assert b.pricing.cost(0, 1_000_000) == 1.0
    assert b.capabilities.missing(Capabilities(logprobs=True, top_logprobs=5)) == [
        "logprobs",
        "top_logprobs>=5",
    ]


def test_fake_kind_comes_from_the_entry_point() -> None:
    assert backends.get("fake") is fake_kind
    cfg = BackendConfig(
        kind="fake",
        model="m",
        capabilities=Capabilities(),
        options={"answers": ["7"], "latency": 0.5},
    )
    backend = create_backend("demo", cfg)
    assert isinstance(backend, FakeBackend)
    assert (backend.name, backend.model, backend.latency) == ("demo", "m", 0.5)
    assert backend.capabilities == Capabilities() and backend.answers == ["7"]


def test_production_code_does_not_import_the_test_fake() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("orchestrator", "strategies", "verifiers", "search"):
        for path in (root / package).rglob("*.py"):
            if "testing" in path.relative_to(root).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(
                    n == "orchestrator.testing" or n.startswith("orchestrator.testing.")
                    for n in names
                ):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"production modules importing orchestrator.testing: {offenders}"
