"""Tests for orchestrator.runner.Orchestrator: runs, budgets, traces, concurrency, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.base import Capabilities, GenerationRequest, Pricing
from orchestrator.budget import Budget
from orchestrator.context import RunContext
from orchestrator.errors import CapabilityError, ConfigError, RegistryError
from orchestrator.registry import verifiers as verifiers_registry
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, Problem, Result, Score
from strategies import Strategy, build_strategy
from verifiers import Verifier

QUESTION = "What is 6*7?"
NESTED = {
    "strategy": "best_of_n",
    "n": 3,
    "verifier": "majority_vote",
    "inner": {"strategy": "self_consistency", "n": 4, "max_tokens": 64},
}


def spans(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every span of a trace dict, depth first."""
    out = [node]
    for child in node.get("children", []):
        out.extend(spans(child))
    return out


def backend_spans(result: Result) -> list[dict[str, Any]]:
    assert result.trace is not None
    return [s for s in spans(result.trace) if s["kind"] == "backend"]


def assert_usage_matches_trace(result: Result) -> None:
    calls = backend_spans(result)
    u = result.usage
    assert u.prompt_tokens == sum(s["prompt_tokens"] for s in calls)
    assert u.completion_tokens == sum(s["completion_tokens"] for s in calls)
    assert u.calls == sum(s.get("attrs", {}).get("calls", 0) for s in calls)
    assert u.cost_usd == pytest.approx(sum(s["cost_usd"] for s in calls))


# --- construction -----------------------------------------------------------------------------


def test_constructor_forms_and_errors() -> None:
    a, b = FakeBackend(name="a"), FakeBackend(name="b")
    assert Orchestrator([a, b]).default_backend == "a"
    assert Orchestrator({"x": a}).backends == {"x": a}
    assert Orchestrator([a, b], "b").resolve(None) is b
    with pytest.raises(ConfigError, match="at least one backend"):
        Orchestrator([])
    with pytest.raises(ConfigError, match="default backend 'c' is not among a, b"):
        Orchestrator([a, b], "c")
    with pytest.raises(ConfigError, match="unknown backend 'zz'; configured: a, b"):
        Orchestrator([a, b]).resolve("zz")


def test_describe() -> None:
    plain = FakeBackend(name="plain", capabilities=Capabilities(native_n=True))
    info = Orchestrator([plain]).describe()
    assert info == {
        "plain": {
            "kind": "fake",
            "model": "fake-model",
            "logprobs": False,
            "top_logprobs": 0,
            "prefix_continuation": False,
            "native_n": True,
        }
    }


async def test_from_config_and_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(
        "default: two\nbackends:\n"
        "  one: {kind: fake, options: {answers: ['1']}}\n"
        "  two: {kind: fake, model: m2, pricing: {completion: 2.0}, options: {answers: ['2']}}\n"
    )
    orch = Orchestrator.from_config(path)
    assert orch.default_backend == "two"
    assert orch.backends["two"].model == "m2" and orch.backends["two"].pricing.completion == 2.0
    async with orch:
        await orch.start()
        assert (await orch.run(QUESTION, "single")).answer == "2"
        assert (await orch.run(QUESTION, "single", backend="one")).answer == "1"
    assert Orchestrator.from_config(path, default_backend="one").default_backend == "one"


LAZY = {
    "default": "fake",
    "backends": {
        "fake": {"kind": "fake", "options": {"answers": ["42"]}},
        "other": {"kind": "fake", "model": "other-model"},
        "remote": {
            "kind": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "m",
            "api_key_env": "TTC_TEST_UNSET_KEY",
        },
    },
}


async def test_from_config_builds_only_what_runs_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared backend whose key is unset costs nothing until a run names it; a bad spec is
    refused before any backend is built or started."""
    monkeypatch.delenv("TTC_TEST_UNSET_KEY", raising=False)
    started: list[str] = []
    monkeypatch.setattr(FakeBackend, "start", lambda self: _record(started, self.name))
    async with Orchestrator.from_config(LAZY) as orch:
        assert sorted(orch.backends) == ["fake", "other", "remote"] and orch.built() == {}
        with pytest.raises(RegistryError, match="unknown strategy 'nope'"):
            await orch.run(QUESTION, "nope")
        with pytest.raises(ConfigError, match="n: "):
            await orch.run(QUESTION, {"strategy": "self_consistency", "n": 0})
        assert orch.built() == {} and started == []
        assert (await orch.run(QUESTION, "single")).answer == "42"
        assert list(orch.built()) == ["fake"] and started == ["fake"]
        await orch.run(QUESTION, "single")
        assert started == ["fake"]  # started once
        with pytest.raises(ConfigError, match="TTC_TEST_UNSET_KEY"):
            await orch.run(QUESTION, "single", backend="remote")
        await orch.run(QUESTION, {"strategy": "single", "backend": "other"})
        assert sorted(orch.built()) == ["fake", "other"]


async def _record(started: list[str], name: str) -> None:
    started.append(name)


async def test_aclose_closes_every_backend() -> None:
    closed: list[str] = []

    class Closing(FakeBackend):
        async def aclose(self) -> None:
            closed.append(self.name)

    async with Orchestrator([Closing(name="a"), Closing(name="b")]):
        pass
    assert closed == ["a", "b"]


# --- basic runs -------------------------------------------------------------------------------


async def test_run_fills_usage_trace_and_run_id() -> None:
    backend = FakeBackend(answers=["42"], pricing=Pricing(prompt=1.0, completion=3.0))
    orch = Orchestrator([backend])
    r1 = await orch.run(QUESTION, {"strategy": "self_consistency", "n": 4})
    r2 = await orch.run(Problem(question=QUESTION, id="p7"), "single")
    assert r1.answer == "42" and r1.strategy == "self_consistency"
    assert r1.usage.calls == 1 and r1.usage.prompt_tokens == 20
    assert r1.usage.completion_tokens == 4 * 16
    assert r1.usage.cost_usd == pytest.approx((20 * 1.0 + 64 * 3.0) / 1e6)
    assert r1.usage.seconds > 0
    assert r1.run_id and r2.run_id and r1.run_id != r2.run_id
    assert r1.budget_exhausted is False
    assert r1.trace is not None and r1.trace["kind"] == "run"
    assert r1.trace["attrs"] == {"problem_id": None, "strategy": "self_consistency"}
    assert r2.trace is not None and r2.trace["attrs"]["problem_id"] == "p7"
    assert_usage_matches_trace(r1)


async def test_usage_equals_the_sum_over_backend_spans_of_a_nested_run() -> None:
    backend = FakeBackend(pricing=Pricing(prompt=0.5, completion=2.0), short_n=3)
    result = await Orchestrator([backend]).run(QUESTION, NESTED)
    calls = backend_spans(result)
    assert len(calls) == backend.calls == 6  # 3 child runs, each topping up 3 + 1
    assert result.usage.calls == 6
    assert result.usage.cost_usd > 0
    assert_usage_matches_trace(result)


async def test_trace_nests_strategies_and_backend_calls() -> None:
    result = await Orchestrator([FakeBackend()]).run(QUESTION, NESTED)
    assert result.trace is not None
    (top,) = result.trace["children"]
    assert (top["kind"], top["name"]) == ("strategy", "best_of_n")
    kids = top["children"]
    assert [k["name"] for k in kids] == ["self_consistency"] * 3 + ["majority_vote"]
    assert kids[-1]["kind"] == "verifier"
    for sc in kids[:3]:
        assert sc["kind"] == "strategy"
        (call,) = sc["children"]
        assert call["kind"] == "backend" and call["name"] == "fake"
        assert call["attrs"]["n"] == 4 and call["attrs"]["max_tokens"] == 64
        assert call["completion_tokens"] > 0


# --- errors before any call -------------------------------------------------------------------


async def test_capability_refusal_happens_before_any_call() -> None:
    backend = FakeBackend(capabilities=Capabilities())
    with pytest.raises(CapabilityError) as info:
        await Orchestrator([backend]).run(
            QUESTION, {"strategy": "best_of_n", "verifier": "mean_logprob"}
        )
    assert "logprobs" in str(info.value) and "best_of_n" in str(info.value)
    assert backend.calls == 0


async def test_capability_refusal_for_a_nested_node_on_its_own_backend() -> None:
    rich, plain = FakeBackend(name="rich"), FakeBackend(name="plain", capabilities=Capabilities())
    spec = {
        "strategy": "self_consistency",
        "n": 2,
        "inner": {"strategy": "best_of_n", "n": 2, "backend": "plain"},
    }
    with pytest.raises(CapabilityError, match="'plain'"):
        await Orchestrator([rich, plain]).run(QUESTION, spec)
    assert rich.calls == plain.calls == 0
    spec["inner"]["backend"] = "rich"  # type: ignore[index]
    result = await Orchestrator([rich, plain]).run(QUESTION, spec)
    assert result.answer is not None and rich.calls == 2 and plain.calls == 0


async def test_unknown_strategy_lists_known_names() -> None:
    backend = FakeBackend()
    with pytest.raises(RegistryError) as info:
        await Orchestrator([backend]).run(QUESTION, "no_such_strategy")
    msg = str(info.value)
    assert "'no_such_strategy'" in msg
    for name in ("best_of_n", "repeated_sampling", "self_consistency", "single"):
        assert name in msg
    assert backend.calls == 0


async def test_unknown_backend_in_spec_fails_before_any_call() -> None:
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="unknown backend 'elsewhere'"):
        await Orchestrator([backend]).run(QUESTION, {"strategy": "single", "backend": "elsewhere"})
    with pytest.raises(ConfigError, match="unknown backend 'other'"):
        await Orchestrator([backend]).run(QUESTION, "single", backend="other")
    assert backend.calls == 0


async def test_bad_config_fails_before_any_call() -> None:
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="n: "):
        await Orchestrator([backend]).run(QUESTION, {"strategy": "self_consistency", "n": -3})
    assert backend.calls == 0


# --- budgets ----------------------------------------------------------------------------------


async def test_self_consistency_under_a_small_token_budget() -> None:
    backend = FakeBackend(answers=["42", "42", "41"])
    budget = Budget(max_completion_tokens=100)  # 16 samples of 16 tokens would need 256
    result = await Orchestrator([backend]).run(
        QUESTION, {"strategy": "self_consistency", "n": 16}, budget
    )
    assert result.budget_exhausted is True
    assert result.answer == "42"
    assert result.usage.completion_tokens <= 100
    assert 1 <= len(result.candidates) < 16
    assert result.usage.calls == backend.calls == len(backend_spans(result))
    assert all(r.n * r.max_tokens <= 100 for r in backend.requests)
    assert_usage_matches_trace(result)


@pytest.mark.parametrize("limit", [1, 15, 16, 17, 50, 176, 177, 191, 192, 255])
async def test_completion_budget_is_never_exceeded(limit: int) -> None:
    backend = FakeBackend()
    result = await Orchestrator([backend]).run(
        QUESTION, NESTED, Budget(max_completion_tokens=limit)
    )
    assert result.usage.completion_tokens <= limit
    # the graph wants 12 samples of 16 tokens; past 11 full ones, the last sample is admitted
    # narrowed to the tokens left, which is cut short by the budget and so counts as exhausted
    assert result.budget_exhausted is (limit < 12 * 16)
    assert len(result.candidates) == 3


async def test_calls_budget() -> None:
    backend = FakeBackend()
    spec = {"strategy": "self_consistency", "n": 5, "inner": "single"}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_calls=2))
    assert backend.calls == 2 and result.usage.calls == 2
    assert result.budget_exhausted is True
    assert result.answer is not None
    assert result.details["failed"] == 3  # the refused child runs found nothing


async def test_usd_budget() -> None:
    backend = FakeBackend(pricing=Pricing(completion=1_000_000.0))  # $1 per token
    spec = {
        "strategy": "self_consistency",
        "n": 4,
        "inner": {"strategy": "single", "max_tokens": 16},
    }
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_usd=20.0))
    assert result.budget_exhausted is True
    # every child is admitted before any spends; the limit then stops further calls
    assert result.usage.cost_usd == pytest.approx(16.0 * backend.calls)


async def test_seconds_budget_ends_a_slow_run_quickly() -> None:
    backend = FakeBackend(latency=5.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await Orchestrator([backend]).run(
        QUESTION, {"strategy": "self_consistency", "n": 4}, Budget(max_seconds=0.05)
    )
    assert loop.time() - t0 < 1.0
    assert result.budget_exhausted is True
    assert result.answer is None and result.usage.calls == 0
    (call,) = backend_spans(result)
    assert "BudgetExhausted" in call["error"]


async def test_budget_exhaustion_escaping_a_strategy_gives_best_so_far() -> None:
    class Greedy(Strategy):
        """Samples until the meter refuses, never catching BudgetExhausted."""

        async def run(self, problem: Problem, ctx: RunContext) -> Result:
            request = GenerationRequest(messages=problem.messages(), n=1, max_tokens=32)
            while True:
                await ctx.generate(request)

    Greedy.name = "_test_greedy"
    backend = FakeBackend(answers=["5", "5", "6"])
    result = await Orchestrator([backend]).run(QUESTION, Greedy(), Budget(max_calls=3))
    assert result.budget_exhausted is True
    assert result.answer == "5"
    assert result.candidate is not None and result.candidate.answer == "5"
    assert len(result.candidates) == 3
    assert result.details["fallback"] == "best_so_far"
    assert result.details["votes"] == {"5": 2.0, "6": 1.0}
    assert result.strategy == "_test_greedy" and result.usage.calls == 3


# --- concurrency and determinism --------------------------------------------------------------


def fingerprint(result: Result) -> tuple[Any, ...]:
    return (
        result.answer,
        tuple(sc.candidate.text for sc in result.candidates),
        tuple(sorted(result.details.get("votes", {}).items())),
        result.usage.completion_tokens,
        result.usage.calls,
    )


async def test_concurrent_runs_do_not_interfere() -> None:
    spec = {
        "strategy": "best_of_n",
        "n": 2,
        "verifier": "majority_vote",
        "inner": {"strategy": "self_consistency", "n": 4},
    }
    questions = [f"Question {i}: what is {i} + {i}?" for i in range(64)]

    sequential_backend = FakeBackend(seed=3, answers={"1": 0.4, "2": 0.3, "3": 0.3})
    sequential_orch = Orchestrator([sequential_backend])
    sequential_strategy = build_strategy(spec)
    sequential = [
        await sequential_orch.run(q, sequential_strategy, seed=i) for i, q in enumerate(questions)
    ]

    backend = FakeBackend(seed=3, answers={"1": 0.4, "2": 0.3, "3": 0.3}, latency=0.002)
    orch = Orchestrator([backend])
    shared = build_strategy(spec)  # one strategy instance serves every run
    concurrent = await asyncio.gather(
        *(orch.run(q, shared, seed=i) for i, q in enumerate(questions))
    )

    assert [fingerprint(r) for r in concurrent] == [fingerprint(r) for r in sequential]
    assert len({r.answer for r in concurrent}) > 1  # the runs really differ from each other
    for r in concurrent:
        assert r.usage.calls == 2  # only its own two child calls
        assert len(backend_spans(r)) == 2
        assert_usage_matches_trace(r)
        assert r.usage.completion_tokens == 2 * 4 * 16  # two calls of four 16-token samples
    assert sum(r.usage.calls for r in concurrent) == backend.calls == 128
    assert len({r.run_id for r in concurrent}) == 64


async def test_seeded_runs_are_deterministic() -> None:
    async def once() -> Result:
        backend = FakeBackend(seed=11)
        return await Orchestrator([backend]).run(QUESTION, NESTED, seed=5)

    a, b = await once(), await once()
    assert fingerprint(a) == fingerprint(b)
    assert a.details == b.details


async def test_different_seeds_sample_differently() -> None:
    results = []
    for seed in range(4):
        backend = FakeBackend(seed=0)
        spec = {"strategy": "self_consistency", "n": 8, "verifier": "mean_logprob"}
        results.append(await Orchestrator([backend]).run(QUESTION, spec, seed=seed))
    scores = {tuple(sc.score for sc in r.candidates) for r in results}
    assert len(scores) == 4


# --- failures, short answers, cancellation ----------------------------------------------------


async def test_failing_backend_gives_failed_candidates_and_the_error() -> None:
    backend = FakeBackend(answers=["42"], fail_calls=[0, 2])
    spec = {"strategy": "self_consistency", "n": 4, "inner": "single"}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    failed = [sc.candidate for sc in result.candidates if sc.candidate.failed]
    assert len(failed) == 2 and all("injected failure" in (c.error or "") for c in failed)
    assert all(c.finish_reason == "error" for c in failed)
    assert result.details["failed"] == 2 and "injected failure" in result.details["error"]
    assert result.answer == "42" and result.details["votes"] == {"42": 2.0}
    assert result.budget_exhausted is False
    errors = [s for s in backend_spans(result) if "error" in s]
    assert len(errors) == 2 and all("BackendUnavailable" in s["error"] for s in errors)


async def test_failing_direct_sampling_reports_the_error() -> None:
    backend = FakeBackend(fail_calls=[0])
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "self_consistency", "n": 4})
    assert result.answer is None and result.candidates == []
    assert "injected failure" in result.details["error"]
    assert result.usage.calls == 0 and result.budget_exhausted is False


async def test_failure_during_top_up_keeps_what_was_sampled() -> None:
    backend = FakeBackend(answers=["9"], short_n=2, fail_calls=[1])
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "self_consistency", "n": 4})
    assert len(result.candidates) == 2 and result.answer == "9"
    assert "injected failure" in result.details["error"]


async def test_short_n_is_topped_up() -> None:
    backend = FakeBackend(short_n=3)
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "self_consistency", "n": 8})
    assert len(result.candidates) == 8 and result.details["samples"] == 8
    assert [r.n for r in backend.requests] == [8, 5, 2]
    assert result.usage.calls == 3
    assert_usage_matches_trace(result)


async def test_a_backend_returning_nothing_does_not_loop_forever() -> None:
    backend = FakeBackend(short_n=0)
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "self_consistency", "n": 8})
    assert result.candidates == [] and result.answer is None
    assert backend.calls == 2


@pytest.mark.parametrize("spec", ["single", NESTED])
async def test_cancelling_a_run_propagates(spec: Any) -> None:
    backend = FakeBackend(latency=30.0)
    task = asyncio.create_task(Orchestrator([backend]).run(QUESTION, spec))
    await asyncio.sleep(0.02)
    assert backend.calls >= 1
    task.cancel()
    async with asyncio.timeout(2.0):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.sleep(0)
    assert all(t.done() for t in others)


async def test_run_accepts_a_raw_prompt_strategy() -> None:
    class Raw(Strategy):
        async def run(self, problem: Problem, ctx: RunContext) -> Result:
            (cand,) = await ctx.generate(GenerationRequest(prompt="Q: x\nA:", max_tokens=8))
            return Result(answer=cand.answer, candidate=cand)

    Raw.name = "_test_raw"
    backend = FakeBackend(script=lambda req, i: f"{req.prompt} 12")
    result = await Orchestrator([backend]).run(QUESTION, Raw())
    assert result.answer == "12" and result.strategy == "_test_raw"
    assert backend.requests[0].messages is None
    assert backend.requests[0].prompt == "Q: x\nA:"


class _Closing(Verifier):
    """Counts aclose() calls (class-level, since Orchestrator builds fresh instances)."""

    closed = 0

    async def score(self, problem: Problem, candidates: list[Candidate], ctx: Any) -> list[Score]:
        return [Score(value=1.0, verifier=self.name) for _ in candidates]

    async def aclose(self) -> None:
        type(self).closed += 1


if "_test_closing" not in verifiers_registry:
    verifiers_registry.register("_test_closing")(_Closing)


async def test_run_closes_the_verifiers_of_strategies_it_built() -> None:
    _Closing.closed = 0
    orch = Orchestrator([FakeBackend()])
    await orch.run(QUESTION, {"strategy": "best_of_n", "n": 2, "verifier": "_test_closing"})
    assert _Closing.closed == 1
    nested = {
        "strategy": "best_of_n",
        "n": 2,
        "verifier": "_test_closing",
        "inner": {"strategy": "self_consistency", "n": 2, "verifier": "_test_closing"},
    }
    await orch.run(QUESTION, nested)
    assert _Closing.closed == 3  # the parent's verifier and the child's


async def test_run_leaves_a_caller_owned_strategy_open() -> None:
    _Closing.closed = 0
    strategy = build_strategy({"strategy": "best_of_n", "n": 2, "verifier": "_test_closing"})
    await Orchestrator([FakeBackend()]).run(QUESTION, strategy)
    assert _Closing.closed == 0


async def test_backends_are_started_by_their_name_in_the_orchestrator() -> None:
    """One backend object under two names (``small`` and ``large``) starts once per name used."""
    engine = FakeBackend(name="engine-object")
    orch = Orchestrator({"small": engine, "large": engine}, "small")
    spec = {"strategy": "best_of_n", "n": 1, "verifier": "majority_vote",
            "inner": {"strategy": "single", "backend": "large"}}  # fmt: skip
    assert (await orch.run(QUESTION, spec)).answer is not None
    _, used = await orch.prepare({"strategy": "single", "backend": "large"})
    assert used == ["large"]
