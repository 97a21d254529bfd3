"""The in-memory state of a run in flight (``LiveRun``), used by the RunManager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.api.hygiene import scrub
from orchestrator.api.protocol import EventType, ReasonRequest, RunEvent
from orchestrator.runner import Orchestrator
from orchestrator.store.run_store import RunRecord
from orchestrator.trace import Span
from orchestrator.types import Usage
from strategies.base import Strategy


def cancelled_error(reason: str) -> dict[str, Any]:
    """The stored error of a cancelled run."""
    return {"message": reason, "type": "cancelled", "code": "cancelled"}


@dataclass(eq=False)
class LiveRun:
    """A run this process is executing: its record so far, its events, its task.

    ``on_span`` is the run's trace listener: it keeps running usage totals (what a cancelled
    run had spent) and emits a ``progress`` event per closed span. ``emit`` appends an event and
    wakes every ``follow``er; ``done`` is set once the final record is stored and emitted.
    """

    record: RunRecord
    request: ReasonRequest
    strategy: Strategy
    orch: Orchestrator
    t0: float = field(default_factory=time.perf_counter)
    task: asyncio.Task[None] | None = None
    events: list[RunEvent] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cancel_reason: str | None = None
    finalizing: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.record.id

    def emit(self, type: EventType, data: dict[str, Any]) -> RunEvent:
        event = RunEvent(run_id=self.id, seq=len(self.events), type=type, data=data)
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return event

    async def follow(self) -> AsyncIterator[RunEvent]:
        """Every event from the first, then new ones as they come, up to the final one."""
        seen = 0
        while True:
            while seen < len(self.events):
                event = self.events[seen]
                seen += 1
                yield event
                if event.type in ("result", "error"):
                    return
            await self._changed.wait()

    def on_span(self, span: Span) -> None:
        """Trace listener: running usage totals and one progress event per closed span."""
        seconds = round(span.seconds, 6)
        data: dict[str, Any] = {"span": span.name, "kind": span.kind, "seconds": seconds}
        if span.kind == "backend":
            self.usage = self.usage + Usage(
                prompt_tokens=span.prompt_tokens,
                completion_tokens=span.completion_tokens,
                calls=int(span.attrs.get("calls", 0)),
                cost_usd=span.cost_usd,
                cached_tokens=int(span.attrs.get("cached_tokens", 0)),
            )
            data.update(prompt_tokens=span.prompt_tokens, completion_tokens=span.completion_tokens)
        elif "answer" in span.attrs:
            data["answer"] = span.attrs["answer"]
        if span.error:
            data["error"] = scrub(span.error)
        data["usage"] = self.usage_now()
        self.emit("progress", data)

    def usage_now(self) -> dict[str, Any]:
        usage = self.usage.model_copy(update={"seconds": time.perf_counter() - self.t0})
        return usage.model_dump(mode="json")

    def snapshot(self) -> RunRecord:
        if self.record.finished:
            return self.record
        return self.record.model_copy(update={"usage": self.usage_now()})
