"""What the fake OpenAI server (``fake_openai_server``) does to a request: ``Fault``, scripted
one by one, or drawn at random by kind (``random_fault``, ``FAULT_KINDS``)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["status", "slow", "truncated", "short_n", "reset"]
FAULT_KINDS: tuple[str, ...] = (
    "rate_limited",
    "server_error",
    "unavailable",
    "timeout",
    "reset",
    "truncated",
    "short_n",
)
"""The kinds ``random_fault`` draws from: each a way a real OpenAI-compatible server fails."""


@dataclass(frozen=True)
class Fault:
    """What the server does to one request. Build with the class methods."""

    kind: FaultKind
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    choices: int = 0

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        """429 with a ``Retry-After`` header (seconds or an HTTP date; None: no header)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls("status", status=429, message="rate limit reached", headers=headers)

    @classmethod
    def server_error(cls, status: int = 500, message: str = "internal server error") -> Fault:
        """A 5xx with an OpenAI-style error body."""
        return cls("status", status=status, message=message)

    @classmethod
    def bad_request(cls, message: str = "invalid request", status: int = 400) -> Fault:
        """A 4xx (other than 429) with an OpenAI-style error body."""
        return cls("status", status=status, message=message)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering normally (stops early if the client disconnects)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def truncated(cls) -> Fault:
        """200 with a JSON content type whose body is cut off mid-document."""
        return cls("truncated")

    @classmethod
    def short_n(cls, choices: int) -> Fault:
        """Answer normally but with only ``choices`` choices (as a server ignoring ``n``)."""
        return cls("short_n", choices=choices)

    @classmethod
    def reset(cls) -> Fault:
        """Start a 200 answer, then drop the connection before its body is complete."""
        return cls("reset")


def random_fault(
    kind: str, rng: random.Random, *, timeout_seconds: float, retry_after: str = "1"
) -> Fault:
    """A fault of ``kind`` (one of ``FAULT_KINDS``); ``timeout`` sleeps ``timeout_seconds``."""
    if kind == "rate_limited":
        return Fault.rate_limited(retry_after=retry_after)
    if kind == "server_error":
        return Fault.server_error(500)
    if kind == "unavailable":
        return Fault.server_error(503, "service unavailable")
    if kind == "timeout":
        return Fault.slow(timeout_seconds)
    if kind == "reset":
        return Fault.reset()
    if kind == "truncated":
        return Fault.truncated()
    if kind == "short_n":
        return Fault.short_n(rng.randint(0, 1))
    raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
