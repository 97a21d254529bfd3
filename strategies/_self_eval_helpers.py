"""Helpers of ``adaptive_self_eval`` (Manvi, Singh, Ermon 2024).

Pure functions for the batch and temperature schedules, the pruning cut, the full-run token
estimate, the pick rule and joining a prefix with its continuation, so that unit tests check
them on hand-made inputs; and ``Tally``, one run's token counts and outcome flags.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.answers import extract_answer
from orchestrator.trace import Span
from orchestrator.types import Candidate, Score
from strategies.sampling import Collected


def batch_sizes(n_max: int) -> list[int]:
    """Batch sizes 1, 1, 2, 4, 8, ... (each doubling the total so far), summing to ``n_max``."""
    sizes: list[int] = []
    while sum(sizes) < n_max:
        sizes.append(min(max(1, sum(sizes)), n_max - sum(sizes)))
    return sizes


def batch_temperature(batch: int, temperatures: Sequence[float]) -> float:
    """The temperature of batch ``batch`` (0-based): its entry, or the last one past the end."""
    return temperatures[min(batch, len(temperatures) - 1)]


def keep_count(live: int, keep_fraction: float) -> int:
    """Survivors among ``live`` prefixes: ``ceil(keep_fraction * live)``, at least 1 (0 if none)."""
    if live == 0:
        return 0
    return max(1, math.ceil(round(keep_fraction * live, 9)))


def top_indices(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores (ties towards the earlier), in ascending order."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def estimate_full_tokens(done_tokens: int, done: int, cut: Sequence[int], fallback: int) -> int:
    """Tokens of running every sample to the end: ``done`` finished samples spent ``done_tokens``;
    each ``cut`` one counts max(its tokens so far, mean per finished sample or ``fallback``)."""
    mean = done_tokens / done if done else float(fallback)
    return round(done_tokens + sum(max(float(c), mean) for c in cut))


def pick_best(
    cands: Sequence[Candidate], scores: Sequence[float], among: Iterable[int] | None = None
) -> int | None:
    """The best live candidate (answer first, then score, then earlier), or None."""
    pool = range(len(cands)) if among is None else among
    live = [i for i in pool if not cands[i].failed]
    if not live:
        return None
    return max(live, key=lambda i: (cands[i].answer is not None, scores[i], -i))


def backend_tokens(span: Span) -> int:
    """Completion tokens of the backend calls under ``span``."""
    return sum(s.completion_tokens for s in span.walk() if s.kind == "backend")


def joined(prefix: Candidate, rest: Candidate, answer_format: str) -> Candidate:
    """A prefix and its continuation as one candidate, its answer extracted from the whole."""
    text = prefix.text + rest.text
    logprobs = prefix.logprobs + rest.logprobs if prefix.logprobs and rest.logprobs else None
    return rest.model_copy(
        update={
            "text": text,
            "tokens": prefix.tokens + rest.tokens,
            "logprobs": logprobs,
            "answer": extract_answer(text, answer_format),
            "cached": prefix.cached and rest.cached,
        }
    )


def without_partial_answers(
    cands: Sequence[Candidate], keep: Container[int | None]
) -> list[Candidate]:
    """``cands`` with the answer cleared in each one cut short (``finish_reason == "length"``)
    whose index is not in ``keep``: a number in a partial text is no final answer."""
    return [
        c.model_copy(update={"answer": None})
        if c.finish_reason == "length" and i not in keep
        else c
        for i, c in enumerate(cands)
    ]


@dataclass
class Tally:
    """One run's spending and outcome flags (a local of ``run``, never kept on the strategy)."""

    sample_tokens: int = 0
    probe_tokens: int = 0
    exhausted: bool = False
    error: str | None = None

    def note(self, got: Collected) -> None:
        """Record how a sampling call ended (budget, backend error)."""
        self.exhausted = self.exhausted or got.budget_exhausted
        self.error = got.error or self.error

    def probed(self, scores: Sequence[Score], span: Span) -> None:
        """Count a probe stage's tokens; a probe refused by the budget marks it exhausted."""
        self.probe_tokens += backend_tokens(span)
        self.exhausted = self.exhausted or any(s.details.get("budget_exhausted") for s in scores)

    def details(self, full_estimate: int, stop_reason: str) -> dict[str, Any]:
        """The token accounting and stop reason every mode reports."""
        used = self.sample_tokens + self.probe_tokens
        out: dict[str, Any] = {
            "tokens_used": used,
            "probe_tokens": self.probe_tokens,
            "full_tokens_estimate": full_estimate,
            "tokens_saved_vs_full": full_estimate - used,
            "stop_reason": stop_reason,
        }
        if self.error:
            out["error"] = self.error
        return out
