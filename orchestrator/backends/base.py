"""The backend contract: one coroutine, ``generate(request) -> Generation``.

Who calls it: only ``RunContext.generate`` (through the run's BudgetMeter and trace), never a
strategy directly. A backend owns its transport: concurrency limit, rate limit, timeouts and
retries live here, not in strategies. Transport failures surface as ``BackendError``
subclasses (``raise ... from``). Resources (HTTP pools, engines) are released by ``aclose()``,
which the owner (the Orchestrator, the CLI, the service lifespan) calls exactly once.

A request carries either chat ``messages`` or a raw ``prompt``. With ``messages`` whose last
entry is an assistant message and ``continue_final=True``, the backend continues that partial
assistant message (prefix continuation) instead of starting a new turn; only backends with
``capabilities.prefix_continuation`` accept that, and the candidates hold only the continuation
(the partial message is not repeated).

What every backend guarantees (``orchestrator.testing.backend_suite`` checks it):

- at most ``n`` candidates (fewer only on partial failure), ``Generation.calls`` the number of
  underlying requests, completion tokens the sum over the candidates, prompt tokens counted
  once per underlying request;
- each candidate at most ``max_tokens`` tokens (finish reason ``length`` when cut there) and
  cut before the first ``stop`` string, which it does not contain (finish reason ``stop``);
- logprobs only when the request asks for them (one per token; ``top`` with at most
  ``top_logprobs`` alternatives, or None when none were asked for); otherwise ``logprobs`` is
  None;
- a request that needs a capability the backend does not declare (logprobs, more
  ``top_logprobs`` than declared, prefix continuation; see
  ``GenerationRequest.required_capabilities``) is refused with ``CapabilityError`` before
  anything is sent: it is neither answered with less nor silently degraded;
- a cancelled ``generate`` aborts its underlying work and lets ``CancelledError`` propagate; a
  call over the backend's own timeout raises ``BackendTimeout``; every other failure is a
  ``BackendError`` subclass.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.types import Candidate, Message


class Capabilities(BaseModel):
    """What a backend can do. Strategies check these before their first call."""

    model_config = ConfigDict(frozen=True)

    logprobs: bool = False
    top_logprobs: int = 0
    prefix_continuation: bool = False
    native_n: bool = False

    def missing(self, needed: Capabilities) -> list[str]:
        """Names of the capabilities in ``needed`` that this backend lacks."""
        out = [
            name
            for name in ("logprobs", "prefix_continuation", "native_n")
            if getattr(needed, name) and not getattr(self, name)
        ]
        if needed.top_logprobs > self.top_logprobs:
            out.append(f"top_logprobs>={needed.top_logprobs}")
        return out


class Pricing(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True)

    prompt: float = 0.0
    completion: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollar cost of one call."""
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


class GenerationRequest(BaseModel):
    """One sampling request: ``n`` completions of the same prompt."""

    model_config = ConfigDict(frozen=True)

    messages: list[Message] | None = None
    prompt: str | None = None
    continue_final: bool = False
    n: int = Field(1, ge=1, le=1024)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    stop: list[str] | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    seed: int | None = None

    @model_validator(mode="after")
    def _one_prompt_kind(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` (chat) or `prompt` (raw completion)")
        if self.continue_final and (not self.messages or self.messages[-1].role != "assistant"):
            raise ValueError("`continue_final=True` needs messages ending in an assistant message")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs=True`")
        return self

    def required_capabilities(self) -> Capabilities:
        """The backend capabilities this request needs (never ``native_n``: backends fan out)."""
        return Capabilities(
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            prefix_continuation=self.continue_final,
        )


class Generation(BaseModel):
    """What one ``generate`` call returns.

    Attributes:
        candidates: the completions, at most ``request.n`` (fewer only on partial failure).
        prompt_tokens: prompt tokens processed (counted once per underlying request).
        completion_tokens: generated tokens over all candidates.
        calls: underlying requests made (more than 1 when the backend topped up a short ``n``).
    """

    candidates: list[Candidate]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 1


class Backend(abc.ABC):
    """A source of completions.

    Subclasses set ``kind`` (the ``kind`` in ``configs/backends.yaml``), fill ``name``,
    ``model``, ``capabilities`` and ``pricing`` in ``__init__``, and implement ``generate``.
    """

    kind: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        model: str,
        capabilities: Capabilities,
        pricing: Pricing | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.capabilities = capabilities
        self.pricing = pricing or Pricing()

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> Generation:
        """Sample ``request.n`` completions.

        Must be safe to call concurrently from many tasks. Raises ``BackendError`` subclasses
        on failure; must let ``asyncio.CancelledError`` propagate (and abort the request).
        """

    async def probe(self) -> None:  # noqa: B027 - optional hook
        """Find out what this backend can do without loading a model (one cheap request at
        most), so that ``capabilities`` are final before a run's capability check. Called
        before ``start``; idempotent; default: nothing (capabilities known at construction)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (load a model, open a pool). Idempotent; default: nothing."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Idempotent; default: nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"
