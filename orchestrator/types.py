"""Core value types: Problem, Message, Candidate, Score, Usage, Result.

All are pydantic models so that the CLI, the REST service and the store serialise them the same
way (``model_dump(mode="json")``). Candidates and scores are immutable; strategies derive new
ones with ``model_copy(update=...)``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class Problem(BaseModel):
    """A question to answer.

    Attributes:
        question: the user's question.
        system_prompt: an optional system message sent before the question.
        reference: the reference answer, when known (evaluation only; never shown to the model).
        answer_format: how to extract the final answer: ``auto``, ``boxed``, ``gsm8k``,
            ``answer_is``, ``number``, ``choice`` or ``text`` (see ``orchestrator.answers``).
        id: an optional stable identifier (datasets, traces).
        metadata: free-form data carried along untouched.
    """

    model_config = ConfigDict(frozen=True)

    question: str
    system_prompt: str | None = None
    reference: str | None = None
    answer_format: str = "auto"
    id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def messages(self) -> list[Message]:
        """The chat messages that pose this problem to a model."""
        msgs = [Message(role="system", content=self.system_prompt)] if self.system_prompt else []
        msgs.append(Message(role="user", content=self.question))
        return msgs


class TokenLogprob(BaseModel):
    """The log-probability of one sampled token, and optionally its top alternatives."""

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float
    top: dict[str, float] | None = None


class Candidate(BaseModel):
    """One sampled completion.

    Attributes:
        text: the generated text (without the prompt or a continued prefix).
        tokens: number of generated tokens.
        logprobs: per-token logprobs when the request asked for them, else None.
        finish_reason: ``stop``, ``length``, ``error`` or the backend's own word.
        answer: the extracted final answer, or None when none could be found.
        model: the model that produced it; backend: the backend's configured name.
        error: the error message when this sample failed (``finish_reason == "error"``).
        cached: True when the completion came from a cache rather than a fresh call.
    """

    model_config = ConfigDict(frozen=True)

    text: str
    tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    answer: str | None = None
    model: str = ""
    backend: str = ""
    error: str | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        """True when the sample is an error placeholder rather than a real completion."""
        return self.error is not None

    def mean_logprob(self) -> float | None:
        """Mean log-probability over generated tokens, or None without logprobs."""
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)


class Score(BaseModel):
    """A verifier's judgement of one candidate: higher is better.

    Attributes:
        value: the score; most verifiers use [0, 1].
        verifier: the name of the verifier that produced it.
        details: verifier-specific evidence (votes, probabilities, parsed judge output).
    """

    model_config = ConfigDict(frozen=True)

    value: float
    verifier: str
    details: dict[str, Any] = Field(default_factory=dict)


class Usage(BaseModel):
    """Resources spent: tokens, calls, money and wall time.

    Token counts and ``cost_usd`` count every sample the run used, including samples served
    by the completion cache, so the numbers (and the budget) do not depend on whether the cache
    was warm. ``cached_tokens`` is the part of ``completion_tokens`` served from the cache,
    i.e. not paid to a backend in this run.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            calls=self.calls + other.calls,
            cost_usd=self.cost_usd + other.cost_usd,
            seconds=self.seconds + other.seconds,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class ScoredCandidate(BaseModel):
    """A candidate with the scores verifiers gave it."""

    candidate: Candidate
    scores: list[Score] = Field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The last (most specific) score's value, or None when unscored."""
        return self.scores[-1].value if self.scores else None


class Result(BaseModel):
    """What a strategy returns.

    Attributes:
        answer: the final extracted answer (None when no candidate gave one).
        candidate: the chosen candidate, or None when every sample failed.
        candidates: every candidate considered, with scores.
        usage: totals over all backend calls of the run (filled in by the Orchestrator).
        trace: the run's span tree as a dict (filled in by the Orchestrator).
        budget_exhausted: True when the budget stopped the strategy early.
        strategy: the strategy's registered name.
        details: strategy-specific output (votes, pass@k, confidence, ...).
    """

    answer: str | None
    candidate: Candidate | None = None
    candidates: list[ScoredCandidate] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    trace: dict[str, Any] | None = None
    budget_exhausted: bool = False
    strategy: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None
