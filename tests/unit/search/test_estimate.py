"""search.estimate: dry-run cost estimates on probe backends, and the budget checks on them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.backends.base import Capabilities, Pricing
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.types import Problem
from search.estimate import CostEstimate, estimate_cost, over_budget, spend_ratio

SHORT = Problem(question="What is 2 + 2?", reference="4", id="short")


def _estimate(
    spec: dict[str, Any],
    tokens_per_sample: int = 64,
    problems: list[Problem] | None = None,
    backend: FakeBackend | None = None,
) -> tuple[CostEstimate, FakeBackend]:
    """The estimate of ``spec`` over a FakeBackend-backed orchestrator, and that backend."""
    fake = backend or FakeBackend()
    orch = Orchestrator([fake])
    est = asyncio.run(estimate_cost(spec, orch, problems or [SHORT], tokens_per_sample))
    return est, fake


@pytest.mark.parametrize("tokens_per_sample", [64, 32, 10])
def test_self_consistency_is_one_native_n_call_of_n_capped_samples(tokens_per_sample: int) -> None:
    spec = {"strategy": "self_consistency", "n": 8, "max_tokens": 32}
    est, _ = _estimate(spec, tokens_per_sample)
    assert est.calls == 1  # the FakeBackend offers native n: one request for all 8 samples
    assert est.completion_tokens == 8 * min(tokens_per_sample, 32)
    assert est.tokens_per_sample == min(tokens_per_sample, 32)
    assert est.as_dict()["completion_tokens"] == est.completion_tokens


def test_tiny_tokens_per_sample_is_honoured() -> None:
    est, _ = _estimate({"strategy": "self_consistency", "n": 8, "max_tokens": 32}, 2)
    assert est.completion_tokens == 8 * 2


def test_single_is_one_call_of_one_sample() -> None:
    est, _ = _estimate({"strategy": "single", "max_tokens": 32}, 10)
    assert (est.calls, est.completion_tokens) == (1, 10)


def test_self_eval_probes_add_calls_over_plain_sampling() -> None:
    plain, _ = _estimate({"strategy": "self_consistency", "n": 1, "max_tokens": 32})
    bon, _ = _estimate({"strategy": "best_of_n", "n": 4, "verifier": "self_eval", "max_tokens": 32})
    assert plain.calls == 1
    assert bon.calls == 1 + 4  # one sampling call, one one-token probe per candidate
    assert bon.calls > plain.calls
    assert bon.completion_tokens == 4 * 32 + 4  # the probes answer with one token each


def test_nested_strategy_counts_every_child_run() -> None:
    spec = {
        "strategy": "self_consistency",
        "n": 3,
        "inner": {"strategy": "single", "max_tokens": 8},
    }
    est, _ = _estimate(spec, 64)
    assert est.calls == 3
    assert est.completion_tokens == 3 * 8  # the child's own max_tokens caps each sample


def test_prompt_tokens_scale_with_the_question_and_the_worst_problem_counts() -> None:
    long = Problem(question="What is 2 + 2? " + "Think hard. " * 100, reference="4", id="long")
    spec = {"strategy": "single", "max_tokens": 16}
    short_est, _ = _estimate(spec, problems=[SHORT])
    long_est, _ = _estimate(spec, problems=[long])
    both, _ = _estimate(spec, problems=[SHORT, long, SHORT])
    assert long_est.prompt_tokens - short_est.prompt_tokens >= (len(long.question) - 20) / 4
    assert both.prompt_tokens == long_est.prompt_tokens  # the worst probed problem


def test_usd_follows_the_backend_pricing() -> None:
    pricing = Pricing(prompt=2.0, completion=10.0)  # USD per million tokens
    est, _ = _estimate(
        {"strategy": "self_consistency", "n": 4, "max_tokens": 16},
        backend=FakeBackend(pricing=pricing),
    )
    expected = (est.prompt_tokens * 2.0 + est.completion_tokens * 10.0) / 1e6
    assert est.usd == pytest.approx(expected)
    assert est.usd > 0
    free, _ = _estimate({"strategy": "self_consistency", "n": 4, "max_tokens": 16})
    assert free.usd == 0.0


def test_the_real_backend_is_never_called() -> None:
    spec = {"strategy": "best_of_n", "n": 4, "verifier": "self_eval", "max_tokens": 32}
    est, fake = _estimate(spec, problems=[SHORT, SHORT.model_copy(update={"id": "b"})])
    assert est.calls > 0
    assert fake.calls == 0
    assert fake.requests == []


def test_logprob_strategy_on_a_backend_without_logprobs_raises_capability_error() -> None:
    fake = FakeBackend(capabilities=Capabilities(native_n=True))
    spec = {"strategy": "best_of_n", "n": 4, "verifier": "mean_logprob"}
    with pytest.raises(CapabilityError, match="logprobs"):
        _estimate(spec, backend=fake)
    assert fake.calls == 0


def _est(**values: float) -> CostEstimate:
    base = {"calls": 1.0, "prompt_tokens": 10.0, "completion_tokens": 64.0, "usd": 0.0}
    return CostEstimate(tokens_per_sample=32, **{**base, **values})


def test_over_budget_names_the_limit_and_both_numbers() -> None:
    reason = over_budget(_est(completion_tokens=512), Budget(max_completion_tokens=100))
    assert reason is not None
    assert "max_completion_tokens" in reason
    assert "512" in reason and "100" in reason
    assert "32 tokens per sample" in reason


def test_over_budget_checks_calls_and_passes_what_fits() -> None:
    budget = Budget(max_calls=4, max_completion_tokens=1000)
    reason = over_budget(_est(calls=5), budget)
    assert reason is not None and "max_calls" in reason and "5" in reason and "4" in reason
    assert over_budget(_est(calls=4, completion_tokens=1000), budget) is None  # equal fits
    assert over_budget(_est(calls=99), Budget()) is None  # no limits, nothing is over


def test_spend_ratio_is_the_largest_ratio_over_the_set_limits() -> None:
    usage = {"calls": 2.0, "prompt_tokens": 10.0, "completion_tokens": 150.0, "usd": 0.0}
    assert spend_ratio(usage, Budget(max_calls=4, max_completion_tokens=100)) == 1.5
    assert spend_ratio(usage, Budget(max_calls=4)) == 0.5
    assert spend_ratio(usage, Budget()) == 0.0
