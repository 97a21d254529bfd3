"""Trace: a tree of spans recording what a run did.

A span is a strategy node, a backend call or a verifier call, with its latency, tokens, cost and
a small payload (attributes). The current span lives in a ``ContextVar`` so that concurrent tasks
spawned under a span (``asyncio.TaskGroup`` copies the context) attach their children to it, and
concurrent runs never see each other's spans.

Usage::

    trace = Trace()
    with trace.span("self_consistency", kind="strategy", n=8) as s:
        ...
        s.set(votes={"42": 5})
    trace.to_dict()
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

SpanKind = Literal["run", "strategy", "backend", "verifier", "step"]

log = logging.getLogger(__name__)

_current: ContextVar[Span | None] = ContextVar("ttc_current_span", default=None)
_ids = itertools.count(1)


@dataclass
class Span:
    """One node of the trace tree. Token and cost fields are set on backend spans."""

    name: str
    kind: SpanKind
    id: int = field(default_factory=lambda: next(_ids))
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    trace_id: str = ""

    def set(self, **attrs: Any) -> None:
        """Add or overwrite attributes (JSON-serialisable values only)."""
        self.attrs.update(attrs)

    @property
    def seconds(self) -> float:
        """Latency of the span (up to now while it is open)."""
        return (self.end if self.end is not None else time.perf_counter()) - self.start

    def walk(self) -> Iterator[Span]:
        """This span and all its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the subtree."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "seconds": round(self.seconds, 6),
        }
        if self.kind == "backend":
            out.update(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cost_usd=self.cost_usd,
            )
        if self.error:
            out["error"] = self.error
        if self.attrs:
            out["attrs"] = self.attrs
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out


SpanListener = Callable[["Span"], None]
"""Called with each span of a trace right after it closes (``end`` set, ``error`` recorded)."""


class Trace:
    """The span tree of one run, rooted at a ``run`` span.

    ``listener``, when given, is called synchronously (in the task that closed the span) with
    every span opened by :meth:`span` as it closes, e.g. to stream a run's progress. It must be
    cheap and must not raise: an exception from it is logged and ignored, never fatal to the run.
    """

    def __init__(
        self, name: str = "run", *, listener: SpanListener | None = None, **attrs: Any
    ) -> None:
        self.id = uuid.uuid4().hex
        self.root = Span(name=name, kind="run", attrs=dict(attrs), trace_id=self.id)
        self.listener = listener

    @contextmanager
    def span(self, name: str, kind: SpanKind = "strategy", **attrs: Any) -> Iterator[Span]:
        """Open a child of the current span (or of the root) for the duration of the block.

        An exception leaving the block is recorded on the span and re-raised.
        """
        parent = _current.get()
        if parent is None or parent.trace_id != self.id:  # no span yet, or another run's
            parent = self.root
        span = Span(name=name, kind=kind, attrs=dict(attrs), trace_id=self.id)
        parent.children.append(span)
        token = _current.set(span)
        try:
            yield span
        except BaseException as exc:
            span.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            span.end = time.perf_counter()
            _current.reset(token)
            if self.listener is not None:
                try:
                    self.listener(span)
                except Exception:  # a broken listener must not break the run
                    log.exception("trace listener failed on span %r", span.name)

    def finish(self) -> None:
        """Close the root span."""
        self.root.end = time.perf_counter()

    def backend_spans(self) -> list[Span]:
        """All backend-call spans, in tree order."""
        return [s for s in self.root.walk() if s.kind == "backend"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole tree."""
        return {"trace_id": self.id, **self.root.to_dict()}
