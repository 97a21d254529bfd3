"""Sampling metrics (Brown et al. 2024, "Large Language Monkeys") and their uncertainty.

- ``pass_at_k`` / ``coverage_curve``: the unbiased pass@k estimator and the coverage curve.
- ``majority_at_k``: the expected accuracy of a majority vote over k of the n samples.
- ``fit_power_law``: the exponentiated power law ``c(k) = exp(a * k^b)`` fitted to coverage.
- ``wilson_interval``: a confidence interval for an accuracy measured on n problems.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)``, computed stably as ``1 - prod_{j=n-c+1..n} (1 - k/j)``;
    1.0 when ``n - c < k``.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for j in range(n - c + 1, n + 1):
        prod *= 1.0 - k / j
    return 1.0 - prod


def coverage_ks(n: int) -> list[int]:
    """The k values of a coverage curve: 1, 2, 4, ... up to n (n included)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def coverage_curve(n: int, c: int) -> dict[int, float]:
    """pass@k for k = 1, 2, 4, ... n."""
    return {k: pass_at_k(n, c, k) for k in coverage_ks(n)}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a success rate of ``successes`` out of ``n``.

    Why Wilson and not the normal approximation (Wald, ``p ± z·sqrt(p(1-p)/n)``): evaluations
    often have tens of problems and accuracies near 0 or 1, exactly where Wald fails. Wald
    collapses to a zero-width interval at 0/n and n/n, can leave [0, 1], and covers the true
    rate far less often than claimed for small n. Wilson inverts the score test instead: it
    always lies within [0, 1], is never empty at the extremes, and keeps close to the nominal
    coverage even for small n.

    Args:
        successes: the number of successes, ``0 <= successes <= n``.
        n: the number of trials; ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
        confidence: the two-sided confidence level, strictly between 0 and 1.

    Returns:
        ``(low, high)`` with ``0 <= low <= successes/n <= high <= 1``; ``low`` is exactly 0.0
        when ``successes == 0`` and ``high`` exactly 1.0 when ``successes == n``.

    Raises:
        ValueError: on a negative n, successes outside [0, n], or confidence outside (0, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes}/{n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    low = 0.0 if successes == 0 else max(0.0, min(p, center - half))
    high = 1.0 if successes == n else min(1.0, max(p, center + half))
    return low, high


def majority_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    samples: int = 200,
) -> float:
    """Expected accuracy of a majority vote over k of the n samples, drawn without replacement.

    The k-subset is uniform over all ``C(n, k)`` subsets. The expectation is exact when
    ``C(n, k) <= samples`` (every subset is enumerated); otherwise it is a Monte Carlo mean over
    ``samples`` random subsets drawn from ``rng``, or from a fresh generator seeded with
    ``seed``, so the same inputs always give the same value.

    Within a subset, answers are grouped by plain string equality: the caller passes answers
    that are already normalised (e.g. one canonical string per ``group_answers`` group), so
    that equal strings mean equal answers. None never wins; a subset of Nones only scores 0.
    The groups with the most votes win; a tie is split evenly, each tied group counting
    ``1 / number of tied groups`` times its correctness (so a tie between a correct and a wrong
    group scores 1/2). A group's correctness is the share of its members in the subset marked
    correct, which is simply 0 or 1 when ``correct`` agrees within each answer.

    Args:
        answers: the normalised answer of every sample (None when a sample gave none).
        correct: per sample, whether its answer is correct; same length as ``answers``.
        k: the number of samples voting, ``1 <= k <= n``.
        seed: the seed of the Monte Carlo generator (ignored when ``rng`` is given).
        rng: a generator to draw the Monte Carlo subsets from instead.
        samples: the enumeration threshold and the number of Monte Carlo subsets (>= 1).

    Returns:
        The expected accuracy, in [0, 1].

    Raises:
        ValueError: on lengths that differ, k outside [1, n], or samples < 1.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"majority_at_k: {n} answers but {len(correct)} correctness flags")
    if not 1 <= k <= n:
        raise ValueError(f"majority_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if samples < 1:
        raise ValueError(f"majority_at_k: samples must be >= 1, got {samples}")
    group_of: dict[str, int] = {}
    gid = np.full(n, -1, dtype=np.int64)
    for i, ans in enumerate(answers):
        if ans is not None:
            gid[i] = group_of.setdefault(ans, len(group_of))
    if not group_of:
        return 0.0
    ok = np.asarray(correct, dtype=np.float64)
    if math.comb(n, k) <= samples:
        combos = list(itertools.combinations(range(n), k))
        subsets = np.array(combos, dtype=np.int64).reshape(len(combos), k)
    else:
        gen = rng if rng is not None else np.random.default_rng(seed)
        subsets = np.argsort(gen.random((samples, n)), axis=1)[:, :k]
    return float(_majority_scores(subsets, gid, ok, len(group_of)).mean())


def _majority_scores(
    subsets: np.ndarray, gid: np.ndarray, ok: np.ndarray, n_groups: int
) -> np.ndarray:
    """The majority-vote score of each row of ``subsets`` (sample indices), vectorised."""
    rows = subsets.shape[0]
    groups = gid[subsets]
    valid = groups >= 0
    flat = (groups + np.arange(rows)[:, None] * n_groups)[valid]
    size = rows * n_groups
    votes = np.bincount(flat, minlength=size).reshape(rows, n_groups).astype(np.float64)
    right = np.bincount(flat, weights=ok[subsets][valid], minlength=size).reshape(rows, n_groups)
    top = votes.max(axis=1, keepdims=True)
    winners = (votes == top) & (top > 0)
    share = np.divide(right, votes, out=np.zeros_like(right), where=votes > 0)
    n_winners = winners.sum(axis=1)
    total = (share * winners).sum(axis=1)
    return np.where(n_winners > 0, total / np.maximum(n_winners, 1), 0.0)


class PowerLawFit(BaseModel):
    """An exponentiated power law ``c(k) = exp(a * k^b)`` fitted to a coverage curve.

    Attributes:
        a: the scale (negative for a coverage below 1).
        b: the exponent (negative for a coverage rising with k).
        r2: the coefficient of determination of the fit of ``log(-log c)`` on ``log k``.
        points: the number of points the fit used.
    """

    model_config = ConfigDict(frozen=True)

    a: float
    b: float
    r2: float
    points: int

    def predict(self, k: float) -> float:
        """The fitted coverage at ``k`` (k > 0)."""
        return math.exp(self.a * k**self.b)


def fit_power_law(ks: Sequence[float], coverage: Sequence[float]) -> PowerLawFit | None:
    """Fit ``c(k) = exp(a * k^b)`` by linear regression of ``log(-log c)`` on ``log k``.

    Since ``log(-log c) = log(-a) + b log k``, the slope is ``b`` and ``a = -exp(intercept)``.
    Only the points with ``k > 0`` and ``0 < c < 1`` are usable (the transform is undefined
    elsewhere).

    Returns:
        The fit, or None with fewer than 3 usable points or when they all share one k.

    Raises:
        ValueError: when ``ks`` and ``coverage`` differ in length.
    """
    if len(ks) != len(coverage):
        raise ValueError(f"fit_power_law: {len(ks)} ks but {len(coverage)} coverage values")
    usable = [(k, c) for k, c in zip(ks, coverage, strict=True) if k > 0 and 0.0 < c < 1.0]
    if len(usable) < 3:
        return None
    x = np.log(np.array([k for k, _ in usable], dtype=np.float64))
    y = np.log(-np.log(np.array([c for _, c in usable], dtype=np.float64)))
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        return None
    slope = float(dx @ (y - y.mean())) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    residual = y - (intercept + slope * x)
    ss_res = float(residual @ residual)
    ss_tot = float((y - y.mean()) @ (y - y.mean()))
    r2 = 1.0 if ss_tot == 0.0 else 1.0 - ss_res / ss_tot
    return PowerLawFit(a=-math.exp(intercept), b=slope, r2=r2, points=len(usable))
