"""Request and response models of the REST service, and strategy spec resolution.

* :class:`ReasonRequest`: the native API's request (``POST /v1/reason``, ``/v1/runs``) and what
  the RunManager runs and stores; the OpenAI route builds one per choice.
* ``ChatCompletion*`` / ``Model*``: the OpenAI-compatible wire format (only the fields ttc
  fills; unknown request fields are accepted and ignored, as vLLM does).
Strategy names, named configs and inline specs are resolved by ``orchestrator.specs``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.answers import ANSWER_FORMATS
from orchestrator.budget import Budget
from orchestrator.types import Problem

StrategyRef = str | dict[str, Any]


class ReasonRequest(BaseModel):
    """One reasoning run.

    Attributes:
        problem: the problem, or just its question as a string.
        strategy: a registered strategy name, a named config (``configs/strategies/NAME.yaml``),
            an inline spec ``{"strategy": name, **config}`` (``name`` may itself be a named
            config, whose fields the inline ones override), or None for the server default.
        budget: per-run limits; None = the server's ``default_budget``.
        backend: the run's default backend name; None = the server's default backend.
        model: a model override for that backend (only backends that can switch models:
            the ``openai`` and ``fake`` kinds); None = the backend's configured model.
        seed: seeds the run's RNG and the sampling seeds derived from it.
        options: presentation options: ``include_trace`` (default true) and
            ``include_logprobs`` (default false; logprobs are not stored without it).
    """

    model_config = ConfigDict(extra="forbid")

    problem: Problem | str
    strategy: StrategyRef | None = None
    budget: Budget | None = None
    backend: str | None = None
    model: str | None = None
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("problem")
    @classmethod
    def _has_question(cls, value: Problem | str) -> Problem | str:
        question = value if isinstance(value, str) else value.question
        if not question.strip():
            raise ValueError("the question is empty")
        if isinstance(value, Problem):
            check_answer_format(value.answer_format)
        return value

    def as_problem(self) -> Problem:
        """The problem as a Problem."""
        return Problem(question=self.problem) if isinstance(self.problem, str) else self.problem


def check_answer_format(value: str | None) -> str | None:
    """``value`` if it is None or one of ``ANSWER_FORMATS``, else ValueError listing them."""
    if value is not None and value not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {value!r}; allowed: {', '.join(ANSWER_FORMATS)}")
    return value


# -- runs: events and stored results -------------------------------------------------------------

EventType = Literal["status", "progress", "result", "error"]


class RunEvent(BaseModel):
    """One event of a run (see ``orchestrator.api.runs``)."""

    run_id: str
    seq: int
    type: EventType
    data: dict[str, Any]


def final_event_type(status: str) -> EventType:
    """``result`` for a succeeded run, else ``error``."""
    return "result" if status == "succeeded" else "error"


# -- OpenAI-compatible wire format ---------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are supported."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A request message. ``developer`` is read as ``system``."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    """``stream_options``."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class TTCOptions(BaseModel):
    """The extra ``ttc`` body field of ``POST /v1/chat/completions``.

    Attributes:
        strategy: overrides the strategy part of the model name (name, named config or spec).
        config: strategy config fields merged into the spec last (they win).
        budget: the per-run budget (each of the ``n`` runs gets it).
        answer_format: how to extract answers (``auto``, ``boxed``, ``number``, ...).
        progress: how a stream reports progress: ``comments`` (SSE comments, invisible to
            standard clients; the default) or ``chunks`` (also chunks with an empty delta and a
            ``ttc_progress`` field).
        other fields: strategy config fields (e.g. ``"n": 4``), merged into the spec before
            ``config``; a field the strategy does not have is a 400 error.
    """

    model_config = ConfigDict(extra="allow")

    strategy: StrategyRef | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    budget: Budget | None = None
    answer_format: str | None = None
    progress: Literal["comments", "chunks"] = "comments"

    _answer_format = field_validator("answer_format")(check_answer_format)


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body. Fields not listed are accepted and ignored.

    ``n`` is the number of independent strategy runs (each answers one choice); ``max_tokens``
    (or ``max_completion_tokens``), ``temperature``, ``top_p`` and ``stop`` go to the strategy's
    sampling config when it has those fields.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    ttc: TTCOptions | None = None


class CompletionUsage(BaseModel):
    """Token totals over every backend call of every run of the request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The message of a choice."""

    role: Literal["assistant"] = "assistant"
    content: str | None


FinishReason = Literal["stop", "length"]


class ChatChoice(BaseModel):
    """One choice: the chosen candidate of one strategy run."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A ``chat.completion`` plus the ``ttc`` object (strategy, answer, votes or scores,
    confidence, budget_exhausted, run_ids, and per-run details in ``runs``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    ttc: dict[str, Any]


class ChunkDelta(BaseModel):
    """The increment of a streamed choice."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One streamed choice."""

    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """A ``chat.completion.chunk``; ttc adds ``ttc_progress`` (progress chunks) and ``ttc``
    (the last chunk)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    ttc_progress: dict[str, Any] | None = None
    ttc: dict[str, Any] | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ttc"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
