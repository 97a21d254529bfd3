"""Tests for orchestrator.metrics: the unbiased pass@k estimator and coverage curves."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from orchestrator.metrics import coverage_curve, coverage_ks, pass_at_k


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
