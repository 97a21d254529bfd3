"""Sampling metrics: the unbiased pass@k estimator and coverage curves (Brown et al. 2024)."""

from __future__ import annotations


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
