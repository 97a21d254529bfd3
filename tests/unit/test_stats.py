"""Tests for orchestrator.stats: pass@k, coverage, Wilson intervals, majority@k, power laws."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from orchestrator.stats import (
    coverage_curve,
    coverage_ks,
    fit_power_law,
    majority_at_k,
    pass_at_k,
    wilson_interval,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration_over_all_subsets(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = float(brute_force_pass_at_k(n, c, k))
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_binomial_formula(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 3, 3), (5, 5, 1), (8, 8, 8), (8, 1, 8), (4, 2, 3)])
def test_pass_at_k_is_exactly_one_when_n_minus_c_below_k(n: int, c: int, k: int) -> None:
    assert n - c < k
    assert pass_at_k(n, c, k) == 1.0


def test_pass_at_k_edge_values() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain accuracy


def test_pass_at_k_is_monotone_in_k_and_c() -> None:
    n = 20
    for c in range(n + 1):
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert values == sorted(values)
    for k in range(1, n + 1):
        values = [pass_at_k(n, c, k) for c in range(n + 1)]
        assert values == sorted(values)


def test_pass_at_k_stable_for_large_n() -> None:
    value = pass_at_k(10_000, 3, 100)
    expected = 1 - math.comb(10_000 - 3, 100) / math.comb(10_000, 100)
    assert value == pytest.approx(expected, rel=1e-9)
    assert 0.0 < value < 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "word"),
    [(5, -1, 1, "c"), (5, 6, 1, "c"), (5, 2, 0, "k"), (5, 2, 6, "k"), (0, 0, 1, "k")],
)
def test_pass_at_k_rejects_bad_input(n: int, c: int, k: int, word: str) -> None:
    with pytest.raises(ValueError, match=rf"{word}="):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("n", "ks"),
    [
        (1, [1]),
        (2, [1, 2]),
        (3, [1, 2, 3]),
        (4, [1, 2, 4]),
        (5, [1, 2, 4, 5]),
        (8, [1, 2, 4, 8]),
        (10, [1, 2, 4, 8, 10]),
        (16, [1, 2, 4, 8, 16]),
        (100, [1, 2, 4, 8, 16, 32, 64, 100]),
    ],
)
def test_coverage_ks(n: int, ks: list[int]) -> None:
    assert coverage_ks(n) == ks


def test_coverage_curve_uses_pass_at_k() -> None:
    curve = coverage_curve(10, 2)
    assert list(curve) == [1, 2, 4, 8, 10]
    assert all(curve[k] == pass_at_k(10, 2, k) for k in curve)
    assert curve[10] == 1.0


# --- Wilson interval ----------------------------------------------------------------------

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_by_quadratic(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The roots in p of (p̂ - p)^2 = z^2 p (1 - p) / n, solved as a plain quadratic."""
    p_hat = successes / n
    # (1 + z²/n) p² - (2p̂ + z²/n) p + p̂² = 0
    qa = 1 + z * z / n
    qb = -(2 * p_hat + z * z / n)
    qc = p_hat * p_hat
    root = math.sqrt(qb * qb - 4 * qa * qc)
    return (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 10, 0.0, Z95**2 / (10 + Z95**2)),  # 0.2775: the upper end at 0/n is z²/(n+z²)
        (10, 10, 10 / (10 + Z95**2), 1.0),  # 0.7225
        (5, 10, 0.2366, 0.7634),
        (81, 263, 0.2553, 0.3662),
        (1, 3, 0.0615, 0.7923),
    ],
)
def test_wilson_interval_known_values(successes: int, n: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=1e-4)
    assert got_high == pytest.approx(high, abs=1e-4)
    q_low, q_high = wilson_by_quadratic(successes, n)
    assert got_low == pytest.approx(q_low, abs=1e-12)
    assert got_high == pytest.approx(q_high, abs=1e-12)


def test_wilson_interval_exact_ends_and_empty() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0


def test_wilson_interval_coverage_properties() -> None:
    for n in range(1, 60):
        for successes in range(n + 1):
            low, high = wilson_interval(successes, n)
            assert 0.0 <= low <= successes / n <= high <= 1.0
            assert low < high
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0] for n in (10, 40, 160)]
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 3  # roughly 1/sqrt(n)


def test_wilson_interval_widens_with_confidence() -> None:
    narrow = wilson_interval(30, 100, confidence=0.8)
    wide = wilson_interval(30, 100, confidence=0.99)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize(("successes", "n", "conf"), [(-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0)])
def test_wilson_interval_rejects_bad_input(successes: int, n: int, conf: float) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, n, confidence=conf)


# --- majority@k ---------------------------------------------------------------------------


def brute_force_majority(answers: list[str | None], correct: list[bool], k: int) -> Fraction:
    """Mean over every k-subset of the majority vote's score, ties split evenly."""
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for subset in subsets:
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if not votes:
            continue
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        right = {answers[i] for i in subset if correct[i]}
        total += Fraction(sum(a in right for a in winners), len(winners))
    return total / len(subsets)


def test_majority_at_k_hand_cases() -> None:
    answers: list[str | None] = ["a", "a", "b"]
    correct = [True, True, False]
    assert majority_at_k(answers, correct, 1) == pytest.approx(2 / 3)
    # {0,1}: a wins; {0,2} and {1,2}: a tie a/b worth 1/2 each
    assert majority_at_k(answers, correct, 2) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert majority_at_k(answers, correct, 3) == 1.0


def test_majority_at_k_ties_split_evenly() -> None:
    assert majority_at_k(["a", "b"], [True, False], 2) == 0.5
    assert majority_at_k(["a", "b", "c"], [False, True, False], 3) == pytest.approx(1 / 3)
    assert majority_at_k(["a", "b", "c"], [False, False, False], 3) == 0.0


def test_majority_at_k_none_never_wins() -> None:
    answers: list[str | None] = [None, None, "b"]
    correct = [False, False, True]
    assert majority_at_k(answers, correct, 1) == pytest.approx(1 / 3)
    assert majority_at_k(answers, correct, 2) == pytest.approx(2 / 3)  # b wins whenever present
    assert majority_at_k(answers, correct, 3) == 1.0
    assert majority_at_k([None, None], [False, False], 2) == 0.0


def test_majority_at_k_uses_plain_string_equality() -> None:
    # "1/2" and "0.5" are different strings: the caller normalises beforehand.
    assert majority_at_k(["1/2", "0.5", "7"], [True, True, False], 3) == pytest.approx(2 / 3)


def test_majority_at_k_exact_matches_brute_force() -> None:
    rng = random.Random(1)
    for _ in range(60):
        n = rng.randint(1, 8)
        answers = [rng.choice(["x", "y", "z", None]) for _ in range(n)]
        correct = [a == "x" for a in answers]
        for k in range(1, n + 1):
            expected = float(brute_force_majority(answers, correct, k))
            got = majority_at_k(answers, correct, k, samples=10_000)
            assert got == pytest.approx(expected, abs=1e-12), (answers, k)


def test_majority_at_k_monte_carlo_close_to_exact() -> None:
    answers: list[str | None] = ["a"] * 5 + ["b"] * 4 + ["c"] * 2 + [None]
    correct = [a == "a" for a in answers]
    k = 6  # C(12, 6) = 924 subsets
    exact = majority_at_k(answers, correct, k, samples=924)
    assert exact == pytest.approx(float(brute_force_majority(answers, correct, k)), abs=1e-12)
    estimate = majority_at_k(answers, correct, k, samples=923)  # Monte Carlo path
    assert estimate != exact
    assert estimate == pytest.approx(exact, abs=0.05)
    precise = majority_at_k(answers, correct, k, samples=20_000)
    assert precise == pytest.approx(exact, abs=0.015)


def test_majority_at_k_is_deterministic_and_accepts_a_generator() -> None:
    answers = [str(i % 5) for i in range(40)]
    correct = [a == "0" for a in answers]
    first = majority_at_k(answers, correct, 10, seed=3)
    assert majority_at_k(answers, correct, 10, seed=3) == first
    from_rng = majority_at_k(answers, correct, 10, rng=np.random.default_rng(3))
    assert from_rng == first
    assert 0.0 <= first <= 1.0


@pytest.mark.parametrize(
    ("answers", "correct", "k"),
    [(["a"], [True, False], 1), (["a", "b"], [True, False], 0), (["a", "b"], [True, False], 3)],
)
def test_majority_at_k_rejects_bad_input(
    answers: list[str | None], correct: list[bool], k: int
) -> None:
    with pytest.raises(ValueError):
        majority_at_k(answers, correct, k)


# --- power-law fit ------------------------------------------------------------------------


def test_fit_power_law_recovers_exact_parameters() -> None:
    a, b = -1.7, -0.45
    ks = coverage_ks(256)
    coverage = [math.exp(a * k**b) for k in ks]
    fit = fit_power_law(ks, coverage)
    assert fit is not None
    assert fit.a == pytest.approx(a, rel=1e-9)
    assert fit.b == pytest.approx(b, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.points == len(ks)
    assert fit.predict(1000.0) == pytest.approx(math.exp(a * 1000**b))


def test_fit_power_law_skips_unusable_points() -> None:
    a, b = -2.0, -0.3
    ks = [1, 2, 4, 8, 16, 32]
    coverage = [0.0] + [math.exp(a * k**b) for k in ks[1:4]] + [1.0, 1.0]
    fit = fit_power_law(ks, coverage)
    assert fit is not None
    assert fit.points == 3
    assert (fit.a, fit.b) == (pytest.approx(a), pytest.approx(b))


def test_fit_power_law_noisy_data_has_r2_below_one() -> None:
    ks = [1, 2, 4, 8, 16]
    coverage = [0.2, 0.45, 0.4, 0.7, 0.75]
    fit = fit_power_law(ks, coverage)
    assert fit is not None
    assert 0.0 < fit.r2 < 1.0
    assert fit.a < 0 and fit.b < 0


def test_fit_power_law_needs_three_usable_points() -> None:
    assert fit_power_law([1, 2], [0.3, 0.5]) is None
    assert fit_power_law([1, 2, 4, 8], [0.0, 0.3, 0.5, 1.0]) is None
    assert fit_power_law([], []) is None
    assert fit_power_law([4, 4, 4], [0.3, 0.4, 0.5]) is None
    with pytest.raises(ValueError):
        fit_power_law([1, 2, 3], [0.5, 0.6])
