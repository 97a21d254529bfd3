"""Answer voting shared by self-consistency and friends.

``vote`` groups equivalent answers (``orchestrator.answers.group_answers``) and weighs each group
by the sum of its members' weights (1 each for plain majority). Ties break towards the group
with more members, then towards the group seen first, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.answers import group_answers
from orchestrator.types import Candidate


@dataclass(frozen=True)
class Vote:
    """The outcome of a vote.

    Attributes:
        groups: indices of candidates per answer group, in first-seen order.
        weights: total weight per group (same order).
        winner: index into ``groups`` of the winning group, or None when no candidate answered.
        confidence: winning weight / total weight (0 when nothing answered).
    """

    groups: list[list[int]]
    weights: list[float]
    winner: int | None
    confidence: float

    def table(self, candidates: Sequence[Candidate]) -> dict[str, float]:
        """``{answer: weight}`` using each group's first member's answer as the label."""
        return {
            str(candidates[g[0]].answer): round(w, 6)
            for g, w in zip(self.groups, self.weights, strict=True)
        }


def vote(candidates: Sequence[Candidate], weights: Sequence[float] | None = None) -> Vote:
    """Group candidates by equivalent answer and pick the heaviest group.

    Failed candidates and candidates without an answer do not vote.
    """
    answers = [None if c.failed else c.answer for c in candidates]
    groups = group_answers(answers)
    w = [1.0] * len(candidates) if weights is None else list(weights)
    totals = [sum(w[i] for i in g) for g in groups]
    if not groups:
        return Vote([], [], None, 0.0)
    winner = max(range(len(groups)), key=lambda j: (totals[j], len(groups[j]), -j))
    total = sum(totals)
    return Vote(groups, totals, winner, totals[winner] / total if total > 0 else 0.0)
