"""Tests for ``rpc`` (Reasoning-pruning Perplexity Consistency): the math, then the strategy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import weibull_min

import strategies.rpc  # noqa: F401 - registers "rpc"
from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.types import Candidate, TokenLogprob
from strategies.rpc import (
    RPC,
    WeibullMixture,
    fit_weibull_mixture,
    high_posterior,
    path_probabilities,
    perplexity_consistency,
    prune_mask,
)

QUESTION = "What is 6*7?"

# Eight low-probability paths agree on 5; three high-probability paths say 8, 8 and 3.
LOW = [0.30, 0.28, 0.32, 0.27, 0.31, 0.29, 0.33, 0.30]
HIGH = [0.85, 0.90, 0.88]
SPLIT_P = LOW + HIGH
SPLIT_ANSWERS = ["5"] * 8 + ["8", "8", "3"]


def cand(lps: list[float] | None, error: str | None = None) -> Candidate:
    logprobs = None if lps is None else [TokenLogprob(token="t", logprob=x) for x in lps]
    return Candidate(text="x", tokens=len(lps or []), logprobs=logprobs, error=error)


class PathBackend(FakeBackend):
    """Serves scripted paths: sample i has answer ``answers[i]`` and ``exp(mean logprob) = p[i]``.

    ``texts`` overrides the completion text of some samples (to make duplicates); an answer of
    "" gives a path without a final answer.
    """

    def __init__(
        self,
        answers: list[str],
        p: list[float],
        texts: dict[int, str] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(script=self._script, token_logprobs=self.logprobs_for, **kw)
        self.plan, self.p, self.texts = answers, p, texts or {}

    def _script(self, request: GenerationRequest, i: int) -> str:
        if i in self.texts:
            return self.texts[i]
        ans = self.plan[i]
        return f"path{i} " + (f"so the answer is \\boxed{{{ans}}}" if ans else "I am unsure")

    def logprobs_for(
        self, request: GenerationRequest, index: int, default: list[TokenLogprob]
    ) -> list[TokenLogprob]:
        lp = math.log(self.p[index])
        return [t.model_copy(update={"logprob": lp}) for t in default]


def spans(node: dict[str, Any], name: str) -> list[dict[str, Any]]:
    own = [node] if node["name"] == name else []
    return own + [s for child in node.get("children", []) for s in spans(child, name)]


# --- the math on hand-made inputs --------------------------------------------------------------


def test_path_probabilities_are_inverse_perplexities() -> None:
    cands = [cand([-1.0, -3.0]), cand([0.0]), cand(None), cand([-1.0], error="boom")]
    assert path_probabilities(cands) == pytest.approx([math.exp(-2.0), 1.0, 0.0, 0.0])


def test_perplexity_consistency_by_hand_counts_duplicate_texts_once() -> None:
    answers = ["12", "12", "12.0", "7", "7", "9", None]
    texts = ["a", "a", "b", "c", "d", "e", "f"]
    p = [0.5, 0.5, 0.3, 0.9, 0.2, 0.4, 0.99]
    pc = perplexity_consistency(answers, texts, p, [True] * 7)
    assert pc.groups == [[0, 1, 2], [3, 4], [5]]  # "12" and "12.0" agree; None does not vote
    # 12: 0.5 (text "a" once) + 0.3 = 0.8; 7: 0.9 + 0.2 = 1.1; 9: 0.4. Total 2.3.
    assert pc.scores == pytest.approx([0.8, 1.1, 0.4])
    assert pc.winner == 1
    assert pc.confidence == pytest.approx(1.1 / 2.3)
    # counting "a" twice would have made 12 win (1.3 > 1.1)
    distinct = perplexity_consistency(answers, ["a", "g", "b", "c", "d", "e", "f"], p, [True] * 7)
    assert distinct.winner == 0 and distinct.scores[0] == pytest.approx(1.3)


def test_perplexity_consistency_ignores_pruned_paths_and_handles_no_answer() -> None:
    pc = perplexity_consistency(["1", "2", "2"], ["a", "b", "c"], [0.9, 0.5, 0.5], [True] * 3)
    assert pc.winner == 1 and pc.confidence == pytest.approx(1.0 / 1.9)
    pc = perplexity_consistency(["1", "2", "2"], ["a", "b", "c"], [0.9, 0.5, 0.5], [1, 0, 0])
    assert pc.groups == [[0]] and pc.winner == 0 and pc.confidence == 1.0
    assert perplexity_consistency([None], ["a"], [0.5], [True]) == (None, [], [], 0.0)


def test_mixture_means_and_high_component() -> None:
    m = WeibullMixture(0.5, 1.0, 2.0, 2.0, 1.0)
    assert m.means == pytest.approx((2.0, math.sqrt(math.pi) / 2))  # Gamma(2)=1, Gamma(1.5)
    assert m.high == 1
    assert WeibullMixture(0.5, 2.0, 1.0, 1.0, 2.0).high == 2
    assert m.to_dict()["high"] == 1 and m.to_dict()["mean1"] == 2.0


def test_high_posterior_and_prune_mask_need_both_conditions() -> None:
    m = WeibullMixture(0.5, 10.0, 0.9, 2.0, 0.3)  # component 1 (mean ~0.86) is "high"
    p = [0.1, 0.2, 0.3, 0.5, 0.95]
    f1 = 0.5 * weibull_min.pdf(p, 10.0, scale=0.9)
    f2 = 0.5 * weibull_min.pdf(p, 2.0, scale=0.3)
    expected = f1 / (f1 + f2)
    assert high_posterior(m, p) == pytest.approx(list(expected), rel=1e-9, abs=1e-12)
    # mean(p) = 0.41: 0.5 has a low posterior (~0.07) but is above the mean, so it stays
    assert expected[3] < 0.5
    assert prune_mask(p, m) == [True, True, True, False, False]
    assert prune_mask(p, None) == [False] * 5  # pruning skipped
    assert prune_mask(p, m, threshold=1e-9) == [False] * 5


def test_weibull_fit_recovers_well_separated_components() -> None:
    rng = np.random.default_rng(7)
    low = 0.3 * rng.weibull(6.0, 300)
    high = 0.9 * rng.weibull(15.0, 700)
    m = fit_weibull_mixture(list(np.concatenate([low, high])))
    assert m is not None and math.isfinite(m.nll)
    hi, lo = (1, 2) if m.high == 1 else (2, 1)
    w_high = m.weight if hi == 1 else 1 - m.weight
    assert w_high == pytest.approx(0.7, abs=0.04)
    assert getattr(m, f"scale{hi}") == pytest.approx(0.9, rel=0.03)
    assert getattr(m, f"scale{lo}") == pytest.approx(0.3, rel=0.05)
    assert getattr(m, f"shape{hi}") == pytest.approx(15.0, rel=0.2)
    assert getattr(m, f"shape{lo}") == pytest.approx(6.0, rel=0.2)


def test_weibull_fit_fails_cleanly_on_degenerate_input() -> None:
    assert fit_weibull_mixture([0.5] * 10) is None
    assert fit_weibull_mixture([0.5]) is None
    assert fit_weibull_mixture([]) is None


def test_pruning_changes_the_winner_versus_plain_pc() -> None:
    texts = [f"t{i}" for i in range(len(SPLIT_P))]
    keep_all = [True] * len(SPLIT_P)
    plain = perplexity_consistency(SPLIT_ANSWERS, texts, SPLIT_P, keep_all)
    # by hand: 5 -> 2.40, 8 -> 1.75, 3 -> 0.88
    assert plain.scores == pytest.approx([2.40, 1.75, 0.88])
    assert SPLIT_ANSWERS[plain.groups[plain.winner or 0][0]] == "5"
    m = fit_weibull_mixture(SPLIT_P)
    assert m is not None
    assert m.means[m.high - 1] == pytest.approx(0.877, abs=0.03)
    assert m.means[2 - m.high] == pytest.approx(0.30, abs=0.03)
    pruned = prune_mask(SPLIT_P, m)
    assert pruned == [True] * 8 + [False] * 3  # the low cluster, all below mean(p) = 0.457
    rpc = perplexity_consistency(SPLIT_ANSWERS, texts, SPLIT_P, [not x for x in pruned])
    assert [SPLIT_ANSWERS[g[0]] for g in rpc.groups] == ["8", "3"]
    assert rpc.scores == pytest.approx([1.75, 0.88])
    assert rpc.winner == 0 and rpc.confidence == pytest.approx(1.75 / 2.63)


# --- the strategy on FakeBackend ---------------------------------------------------------------


async def test_rpc_prunes_the_low_cluster_and_records_it() -> None:
    backend = PathBackend(SPLIT_ANSWERS, SPLIT_P)
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "rpc", "n": 11})
    (req,) = backend.requests
    assert req.logprobs is True and req.n == 11 and req.temperature == 0.7
    assert result.answer == "8" and result.strategy == "rpc"
    assert result.candidate is not None and result.candidate.text.startswith("path9 ")  # p=0.9
    d = result.details
    assert d["pruning"] == "applied" and d["pruned"] == 8 and d["paths"] == 11
    assert d["scores"] == pytest.approx({"8": 1.75, "3": 0.88})
    assert d["confidence"] == pytest.approx(1.75 / 2.63, abs=1e-6)
    assert d["mean_p"] == pytest.approx(sum(SPLIT_P) / 11, abs=1e-6)
    assert d["mixture"]["high"] in (1, 2) and d["mixture"]["weight"] >= 0.2
    scores = [sc.scores[0] for sc in result.candidates]
    assert [s.value for s in scores] == pytest.approx(SPLIT_P)
    assert [s.details["pruned"] for s in scores] == [True] * 8 + [False] * 3
    assert result.trace is not None
    (node,) = spans(result.trace, "rpc")
    assert node["attrs"]["pruning"] == "applied" and node["attrs"]["answer"] == "8"
    assert [c["name"] for c in node["children"]] == [
        "fake",
        "reasoning_pruning",
        "perplexity_consistency",
    ]
    prune_span, pc_span = node["children"][1:]
    assert prune_span["kind"] == "step" and prune_span["attrs"]["pruned"] == 8
    assert prune_span["attrs"]["paths"] == 11 and prune_span["attrs"]["mixture"] == d["mixture"]
    assert pc_span["attrs"]["scores"] == d["scores"]


async def test_rpc_without_pruning_is_plain_perplexity_consistency() -> None:
    backend = PathBackend(SPLIT_ANSWERS, SPLIT_P)
    spec = {"strategy": "rpc", "n": 11, "prune": False}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert result.answer == "5"
    assert result.details["pruning"] == "disabled" and result.details["pruned"] == 0
    assert result.details["scores"] == pytest.approx({"5": 2.40, "8": 1.75, "3": 0.88})
    assert result.details["confidence"] == pytest.approx(2.40 / 5.03, abs=1e-6)
    assert result.candidate is not None and result.candidate.text.startswith("path6 ")  # 0.33


async def test_rpc_skips_pruning_below_min_paths() -> None:
    backend = PathBackend(["5", "5", "5", "8"], [0.3, 0.3, 0.31, 0.9])
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "rpc", "n": 4})
    assert result.details["pruning"] == "skipped: N<8" and result.details["mixture"] is None
    assert result.answer == "5"  # 0.91 > 0.9: plain perplexity consistency
    spec = {"strategy": "rpc", "n": 4, "min_paths_for_pruning": 4}
    result = await Orchestrator([PathBackend(["5", "5", "5", "8"], [0.3, 0.3, 0.31, 0.9])]).run(
        QUESTION, spec
    )
    assert result.details["pruning"] == "applied" and result.details["pruned"] == 3
    assert result.answer == "8"


async def test_rpc_skips_pruning_when_the_fit_fails() -> None:
    backend = PathBackend(["1", "2", "2", "1", "2", "3", "2", "1"], [0.6] * 8)
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "rpc"})
    assert len(backend.requests) == 1 and backend.requests[0].n == 8  # default n
    assert result.details["pruning"] == "skipped: fit failed"
    assert result.details["mixture"] is None and result.details["pruned"] == 0
    assert result.answer == "2"
    assert result.details["confidence"] == pytest.approx(0.5, abs=1e-6)


async def test_rpc_counts_duplicate_completions_once() -> None:
    dup = "same reasoning, so the answer is \\boxed{4}"
    backend = PathBackend(["4", "4", "9"], [0.5, 0.5, 0.8], texts={0: dup, 1: dup})
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "rpc", "n": 3})
    assert result.answer == "9"
    assert result.details["scores"] == pytest.approx({"4": 0.5, "9": 0.8})


async def test_rpc_ignores_unanswered_paths() -> None:
    backend = PathBackend(["", "2", "", "3", "3"], [0.99, 0.5, 0.98, 0.3, 0.3])
    result = await Orchestrator([backend]).run(QUESTION, {"strategy": "rpc", "n": 5})
    assert result.answer == "3" and result.details["paths"] == 3
    assert result.details["scores"] == pytest.approx({"2": 0.5, "3": 0.6})
    first = result.candidates[0].scores[0]
    assert first.value == pytest.approx(0.99) and first.details["voted"] is False


async def test_rpc_refuses_a_backend_without_logprobs() -> None:
    backend = FakeBackend(capabilities=Capabilities())
    with pytest.raises(CapabilityError, match="logprobs"):
        await Orchestrator([backend]).run(QUESTION, "rpc")
    assert backend.calls == 0


async def test_rpc_budget_exhaustion_keeps_the_best_so_far() -> None:
    backend = PathBackend(SPLIT_ANSWERS, SPLIT_P, short_n=3)
    result = await Orchestrator([backend]).run(
        QUESTION, {"strategy": "rpc", "n": 11}, Budget(max_calls=1)
    )
    assert result.budget_exhausted is True and backend.calls == 1
    assert len(result.candidates) == 3 and result.answer == "5"
    assert result.details["pruning"] == "skipped: N<8"
    assert result.details["scores"] == pytest.approx({"5": 0.30 + 0.28 + 0.32})


async def test_rpc_budget_in_tokens() -> None:
    backend = PathBackend(SPLIT_ANSWERS, SPLIT_P)
    spec = {"strategy": "rpc", "n": 11, "max_tokens": 16}
    result = await Orchestrator([backend]).run(QUESTION, spec, Budget(max_completion_tokens=50))
    assert result.budget_exhausted is True
    assert result.usage.completion_tokens <= 50
    assert 1 <= len(result.candidates) < 11 and result.answer == "5"


async def test_rpc_with_inner_uses_each_child_candidates_logprobs() -> None:
    backend = PathBackend(SPLIT_ANSWERS, SPLIT_P, fail_calls=[0])
    inner = {"strategy": "single", "logprobs": True, "temperature": 0.7}
    spec = {"strategy": "rpc", "n": 12, "inner": inner}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert backend.calls == 12 and all(r.n == 1 and r.logprobs for r in backend.requests)
    assert result.details["failed"] == 1 and result.details["paths"] == 11  # failure skipped
    assert result.details["pruning"] == "applied" and result.answer == "8"
    assert result.trace is not None and len(spans(result.trace, "single")) == 12


async def test_rpc_with_inner_without_logprobs_gives_a_clean_no_answer() -> None:
    backend = PathBackend(SPLIT_ANSWERS, SPLIT_P)
    spec = {"strategy": "rpc", "n": 3, "inner": "single"}
    result = await Orchestrator([backend]).run(QUESTION, spec)
    assert result.answer is None and result.candidate is None
    assert "logprobs" in result.details["error"]


def test_rpc_config_defaults_and_validation() -> None:
    cfg = RPC().config
    assert (cfg.n, cfg.temperature, cfg.prune) == (8, 0.7, True)
    assert (cfg.min_paths_for_pruning, cfg.prune_threshold, cfg.inner) == (8, 0.5, None)
    with pytest.raises(ConfigError):
        RPC(prune_threshold=1.5)
    with pytest.raises(ConfigError):
        RPC(pruning=True)
    assert RPC(inner="single").children()[0].name == "single"
