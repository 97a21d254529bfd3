"""Helpers the conformance cases point at by import path (the ``python`` verifier's function)."""

from __future__ import annotations

from orchestrator.types import Candidate, Problem


def length_score(problem: Problem, candidate: Candidate) -> float:
    """A deterministic score in [0, 1]: longer completions score higher, up to 200 characters."""
    return min(1.0, len(candidate.text) / 200)
