"""RunRecorder: what becomes of a run once it changes status: storage, metrics, billing, the
final event, and reads of finished runs.

The RunManager (``orchestrator.api.runs``) owns the lifecycle (queue, tasks, cancellation); it
calls :meth:`RunRecorder.mark_running` when a run gets a slot and :meth:`RunRecorder.finish`
exactly once when it ends. ``finish`` closes the run's strategy, stores the final status, counts
the run in the metrics, settles it with the API key that created it (its daily token
reservation ended, what it spent charged: ``KeyStore.settle``), emits the final
``result`` or ``error`` event (``data``: the final RunRecord as JSON) and keeps the record and
that event among the ``RECENT_RUNS`` most recent, for fast reads and event replay. The error
strings of the stored Result (trace spans, failed candidates, score details) are scrubbed
first (``hygiene.scrub_errors``). A store, metrics or billing failure is logged, never fatal to
the run: the final event is always emitted.

Reads: :meth:`RunRecorder.get` answers from the recent runs, else the store;
:meth:`RunRecorder.final_events` yields the one final event of a run that is not live here.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.api.errors import error_dict, not_found
from orchestrator.api.hygiene import scrub_errors
from orchestrator.api.live import LiveRun
from orchestrator.api.protocol import RunEvent, final_event_type
from orchestrator.specs import result_json
from orchestrator.store.run_store import RunRecord
from orchestrator.types import Result, Usage

if TYPE_CHECKING:
    from orchestrator.api.prometheus import ServiceMetrics
    from orchestrator.store.keys import KeyStore
    from orchestrator.store.run_store import RunStore

log = logging.getLogger("orchestrator.api.runs")

FINAL_SEQ = 2**31 - 1
"""``seq`` of the final event of a run no longer kept in memory (after every real seq)."""
RECENT_RUNS = 128
"""Finished runs kept in memory (final record and event) for fast reads and event replay."""


class RunRecorder:
    """Records runs' status changes (see the module docstring).

    Args:
        store: the RunStore (opened by the caller).
        metrics: ServiceMetrics, or None.
        key_store: the KeyStore charged with each run's tokens (runs with a ``key_id``), or None.
    """

    def __init__(
        self,
        store: RunStore,
        metrics: ServiceMetrics | None = None,
        key_store: KeyStore | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.key_store = key_store
        self._recent: OrderedDict[str, tuple[RunRecord, RunEvent]] = OrderedDict()

    async def mark_running(self, live: LiveRun) -> None:
        """The run got a slot: ``running`` in memory, in the store, and as a status event."""
        live.record = live.record.model_copy(
            update={"status": "running", "started_at": datetime.now(UTC)}
        )
        await self._quietly(self.store.mark_running(live.id), live.id, "mark running")
        live.emit("status", {"status": "running"})

    async def finish(
        self, live: LiveRun, status: str, result: Result | None, error: dict[str, Any] | None
    ) -> RunRecord:
        """Store, count, charge and announce the run's end (see the module docstring); returns
        the final record. Called once per run."""
        await self._close_strategy(live)
        usage = result.usage if result is not None else Usage.model_validate(live.usage_now())
        data = None
        if result is not None:
            try:
                keep = bool(live.request.options.get("include_logprobs", False))
                data = scrub_errors(
                    result_json(result.model_copy(update={"run_id": live.id}), keep)
                )
            except Exception:  # e.g. a plugin put a value that is not JSON in the trace
                log.exception("the result of run %s cannot be stored as JSON", live.id)
                status, error = "failed", error_dict(RuntimeError())
        usage_json = usage.model_dump(mode="json")
        await self._quietly(
            self.store.finish(live.id, status, result=data, usage=usage_json, error=error),
            live.id,
            "store the final status of",
        )
        update = {"status": status, "finished_at": datetime.now(UTC), "result": data}
        record = live.record.model_copy(update={**update, "usage": usage_json, "error": error})
        live.record = record
        self._observe(live, status, result)
        await self._charge(record, usage)
        event = live.emit(final_event_type(status), record.model_dump(mode="json"))
        self._remember(record, event)
        return record

    async def _close_strategy(self, live: LiveRun) -> None:
        try:
            await live.strategy.aclose()
        except Exception:
            log.exception("closing the strategy of run %s failed", live.id)

    def _observe(self, live: LiveRun, status: str, result: Result | None) -> None:
        if self.metrics is None:
            return
        try:
            seconds = time.perf_counter() - live.t0
            self.metrics.observe_run(live.strategy.name, status, seconds, result)
        except Exception:
            log.exception("metrics failed for run %s", live.id)

    async def _charge(self, record: RunRecord, usage: Usage) -> None:
        """Settle the run with its key: end its token reservation, charge what it spent."""
        key_id = record.key_id
        if self.key_store is None or not key_id:
            return
        try:
            await self.key_store.settle(key_id, record.id, usage.total_tokens)
        except Exception as exc:
            log.error("could not charge the tokens of run %s: %s", record.id, exc)

    def _remember(self, record: RunRecord, event: RunEvent) -> None:
        self._recent[record.id] = (record, event)
        while len(self._recent) > RECENT_RUNS:
            self._recent.popitem(last=False)

    @staticmethod
    async def _quietly(op: Awaitable[object], run_id: str, what: str) -> None:
        """Await a store write; a failure is logged, never fatal to the run."""
        try:
            await op
        except Exception as exc:
            log.error("could not %s run %s: %s", what, run_id, exc)

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, run_id: str) -> RunRecord | None:
        """A run's record from the recent runs, else the store (or None)."""
        if run_id in self._recent:
            return self._recent[run_id][0]
        record: RunRecord | None = await self.store.get(run_id)
        return record

    async def final_events(self, run_id: str) -> AsyncIterator[RunEvent]:
        """The one event of a run not live here: its final event (real ``seq`` while recent,
        else ``FINAL_SEQ``), or the status of a run another process sharing the store owns.
        APIError 404 for an unknown run."""
        if run_id in self._recent:
            yield self._recent[run_id][1]
            return
        record = await self.store.get(run_id)
        if record is None:
            raise not_found("run", run_id)
        if record.finished:
            kind, seq = final_event_type(record.status), FINAL_SEQ
            data = record.model_dump(mode="json")
        else:  # owned by another process sharing the store: its status only
            kind, seq, data = "status", 0, {"status": record.status}
        yield RunEvent(run_id=run_id, seq=seq, type=kind, data=data)
