"""RunManager: the service's runs in flight: the queue, their tasks, cancellation and shutdown.

Lifecycle: ``submit`` validates the request (a bad strategy, config, backend or capability
raises ConfigError / RegistryError / CapabilityError before anything is stored), stores the run
``queued`` and starts a task. The task waits for one of ``settings.max_concurrent_runs`` slots,
marks the run ``running``, runs it with ``Orchestrator.run`` and hands the outcome to the
RunRecorder (``orchestrator.api.run_recorder``: storage, metrics, billing, the final event)
once: ``succeeded`` (a candidate, or stopped by its budget); ``failed`` (no candidate because
the backend failed: ``error.type`` ``backend_error``, ``code`` from the failed calls; or an
exception, see ``errors.error_dict``: internal errors are logged with the run id, stored with a
generic message); ``cancelled`` (``cancel``, the client of ``run`` going away, or shutdown; the
error says why, ``usage`` holds what the run spent).

Events (``RunEvent``, ``seq`` 0, 1, ... per run): ``status`` (queued, running), a ``progress``
per closed trace span (span, kind, seconds, tokens, error, running ``usage``), then a final
``result`` (succeeded) or ``error`` event whose ``data`` is the final RunRecord as JSON. A live
run's events are replayed, then followed; a finished run yields its final event only (see
``RunRecorder.final_events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from orchestrator.api.admission import Admission
from orchestrator.api.errors import APIError, error_dict, no_answer_error, not_found
from orchestrator.api.live import LiveRun, cancelled_error
from orchestrator.api.policy import RequestPolicy
from orchestrator.api.protocol import ReasonRequest, RunEvent
from orchestrator.api.run_recorder import FINAL_SEQ, RECENT_RUNS, RunRecorder
from orchestrator.errors import ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.specs import resolve_spec
from orchestrator.store.keys import ApiKey
from orchestrator.store.run_store import RunRecord
from orchestrator.types import Result

if TYPE_CHECKING:
    from orchestrator.api.prometheus import ServiceMetrics
    from orchestrator.api.settings import ServiceSettings
    from orchestrator.store.keys import KeyStore
    from orchestrator.store.run_store import RunStore

__all__ = ["DISCONNECTED", "FINAL_SEQ", "RECENT_RUNS", "SHUTDOWN", "RunEvent", "RunManager"]

log = logging.getLogger(__name__)

MODEL_OVERRIDE_KINDS = frozenset({"openai", "fake"})
"""Backend kinds whose model can be switched per request (they send the model name)."""
DISCONNECTED = "the client disconnected before the run finished"
SHUTDOWN = "the service shut down before the run finished"


class RunManager:
    """Submits, runs, cancels and follows runs (see the module docstring); their status
    changes are recorded by its ``recorder``.

    Args:
        orch: the Orchestrator (started by the caller).
        store: the RunStore (opened by the caller; must stay open until ``shutdown`` returns).
        metrics: ServiceMetrics, or None.
        settings: default strategy and budget, ``max_concurrent_runs``.
        key_store: the KeyStore charged with each run's tokens (runs with a ``key_id``) and
            holding daily token reservations, or None.
    """

    def __init__(
        self,
        orch: Orchestrator,
        store: RunStore,
        metrics: ServiceMetrics | None,
        settings: ServiceSettings,
        *,
        key_store: KeyStore | None = None,
    ) -> None:
        self.orch = orch
        self.store = store
        self.settings = settings
        self.recorder = RunRecorder(store, metrics, key_store)
        self.policy = RequestPolicy(settings)
        self._live: dict[str, LiveRun] = {}
        self.admission = Admission(
            settings, key_store, lambda: [live.record.key_id for live in self._live.values()]
        )
        self._slots = asyncio.Semaphore(settings.max_concurrent_runs)
        self._closing = False

    @property
    def closing(self) -> bool:
        """True once ``shutdown`` began: ``submit`` refuses new runs (503)."""
        return self._closing

    @property
    def in_flight(self) -> int:
        """Runs queued or running in this process."""
        return len(self._live)

    # -- submitting and running ------------------------------------------------------------

    async def submit(
        self, req: ReasonRequest, *, key: ApiKey | None = None, key_id: str | None = None
    ) -> str:
        """Validate, admit, persist (queued) and start ``req``; returns the run id. The run
        belongs to ``key`` (or the key id ``key_id``), whose daily token limit it is charged to.

        Raises ConfigError / RegistryError / CapabilityError (bad request), APIError 400 above
        a cap (``policy.check_tree``), APIError 429 when the queue, the key's concurrent runs
        or its daily tokens are full (``orchestrator.api.admission``), StoreError, or APIError
        503 while shutting down. The stored request carries the resolved strategy spec and the
        effective budget.
        """
        self._refuse_if_closing()
        owner = key.id if key is not None else key_id
        with self.admission.hold(owner):
            spec = resolve_spec(
                req.strategy, self.settings.default_strategy, catalog=self.settings.catalog()
            )
            orch = self._orch_for(req)
            strat, _ = await orch.prepare(spec, req.backend)
            run_id = uuid.uuid4().hex
            try:
                self.policy.check_tree(strat)
                budget = await self.admission.reserve(key, run_id, self.policy.budget(req.budget))
                effective = req.model_copy(update={"strategy": spec, "budget": budget})
                record = await self._create(run_id, effective, owner, key)
            except BaseException:
                await strat.aclose()
                raise
            live = LiveRun(record=record, request=effective, strategy=strat, orch=orch)
            live.emit("status", {"status": "queued"})
            self._live[run_id] = live
        live.task = asyncio.create_task(self._execute(live), name=f"ttc-run-{run_id}")
        try:
            await asyncio.sleep(0)  # the task enters _execute's try, so a cancel is recorded
        except asyncio.CancelledError:
            self.request_cancel(run_id, DISCONNECTED)
            raise
        return run_id

    async def _create(
        self, run_id: str, effective: ReasonRequest, owner: str | None, key: ApiKey | None
    ) -> RunRecord:
        """Store the run queued (its reservation given back if that fails or shutdown began)."""
        try:
            record = await self.store.create(run_id, effective.model_dump(mode="json"), owner)
            if self._closing:  # shutdown began while the run was being stored
                await self.store.finish(run_id, "cancelled", error=cancelled_error(SHUTDOWN))
                self._refuse_if_closing()
        except BaseException:
            await self.admission.release(key, run_id)
            raise
        return record

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise APIError(503, "the service is shutting down", type="service_unavailable",
                           code="shutting_down")  # fmt: skip

    async def submit_many(
        self,
        reqs: Sequence[ReasonRequest],
        *,
        key: ApiKey | None = None,
        key_id: str | None = None,
    ) -> list[str]:
        """``submit`` each request; if one fails (or the caller is cancelled), the runs already
        started are cancelled and the error propagates."""
        ids: list[str] = []
        try:
            for req in reqs:
                ids.append(await self.submit(req, key=key, key_id=key_id))
        except BaseException as exc:
            self._cancel_all(ids, exc)
            raise
        return ids

    async def run(
        self, req: ReasonRequest, *, key: ApiKey | None = None, key_id: str | None = None
    ) -> RunRecord:
        """``submit`` and wait for the final record; cancelling the caller cancels the run."""
        return (await self.run_many([req], key=key, key_id=key_id))[0]

    async def run_many(
        self,
        reqs: Sequence[ReasonRequest],
        *,
        key: ApiKey | None = None,
        key_id: str | None = None,
    ) -> list[RunRecord]:
        """Submit every request, then wait for all final records (in order). If a submit fails
        or the caller is cancelled, every run already started is cancelled."""
        ids = await self.submit_many(reqs, key=key, key_id=key_id)
        try:
            return [await self.wait(run_id) for run_id in ids]
        except BaseException as exc:
            self._cancel_all(ids, exc)
            raise

    def _cancel_all(self, ids: Sequence[str], exc: BaseException) -> None:
        reason = DISCONNECTED
        if not isinstance(exc, asyncio.CancelledError):
            reason = f"the request of this run failed: {type(exc).__name__}: {exc}"
        for run_id in ids:
            self.request_cancel(run_id, reason)

    def _orch_for(self, req: ReasonRequest) -> Orchestrator:
        """The Orchestrator for ``req``: ours, or a view whose backend serves ``req.model``."""
        backend = self.orch.resolve(req.backend)
        if req.model is None or req.model == backend.model:
            return self.orch
        if backend.kind not in MODEL_OVERRIDE_KINDS:
            raise ConfigError(
                f"backend {backend.name!r} ({backend.kind}) serves only its model "
                f"{backend.model!r}, not {req.model!r}; backends: {', '.join(self.orch.backends)}"
            )
        derived = copy.copy(backend)  # shares the transport; never closed on its own
        derived.model = req.model
        return self.orch.with_backend(derived)

    async def _execute(self, live: LiveRun) -> None:
        result: Result | None = None
        status, error = "failed", None
        cancelled = False
        try:
            async with self._slots:
                await self.recorder.mark_running(live)
                req = live.request
                result = await live.orch.run(
                    req.as_problem(),
                    live.strategy,
                    req.budget,
                    backend=req.backend,
                    seed=req.seed,
                    trace_listener=live.on_span,
                )
                live.finalizing = True
            error = no_answer_error(result)
            status = "succeeded" if error is None else "failed"
        except asyncio.CancelledError:
            cancelled, status = True, "cancelled"
            error = cancelled_error(live.cancel_reason or "cancelled")
        except Exception as exc:
            error = error_dict(exc)
            if error["type"] == "internal_error":
                log.exception("run %s failed with an internal error", live.id)
            else:
                log.info("run %s failed: %s", live.id, exc)
        live.finalizing = True
        await self.recorder.finish(live, status, result, error)
        self.admission.observe(time.perf_counter() - live.t0)
        self._live.pop(live.id, None)
        live.done.set()
        if cancelled:
            raise asyncio.CancelledError

    # -- reading, waiting, cancelling ------------------------------------------------------

    async def get(self, run_id: str) -> RunRecord | None:
        """The run's record: live state, else the recent cache, else the store (or None)."""
        live = self._live.get(run_id)
        if live is not None:
            return live.snapshot()
        return await self.recorder.get(run_id)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """The final record, or the current one after ``timeout`` seconds. Waiting (and being
        cancelled while waiting) never affects the run. APIError 404 for an unknown run."""
        live = self._live.get(run_id)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), timeout)
            return live.snapshot()
        record = await self.get(run_id)
        if record is None:
            raise not_found("run", run_id)
        return record

    def request_cancel(self, run_id: str, reason: str = "cancelled by the client") -> bool:
        """Ask a live run to stop (without waiting); False when it is not live or already
        stopping or finishing. It ends ``cancelled`` with ``reason`` as its error message."""
        live = self._live.get(run_id)
        if live is None or live.finalizing or live.cancel_reason is not None or live.task is None:
            return False
        live.cancel_reason = reason
        live.task.cancel()
        return True

    async def cancel(
        self, run_id: str, reason: str = "cancelled by the client"
    ) -> RunRecord | None:
        """Cancel a live run and return its final record; a finished run's record unchanged;
        None for an unknown run."""
        live = self._live.get(run_id)
        if live is None:
            return await self.get(run_id)
        self.request_cancel(run_id, reason)
        await live.done.wait()
        return live.record

    def events(self, run_id: str) -> AsyncIterator[RunEvent]:
        """The run's events (see the module docstring); APIError 404 (on first iteration) for an
        unknown run. A run live at the call is replayed from its first event even if it
        finishes before the iteration starts."""
        live = self._live.get(run_id)
        return live.follow() if live is not None else self.recorder.final_events(run_id)

    # -- shutdown --------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Refuse new runs, give in-flight runs ``grace`` seconds to finish, cancel the rest
        (stored as cancelled with a reason) and wait until every run is stored."""
        self._closing = True
        lives = list(self._live.values())
        if lives and grace > 0:
            pending = [asyncio.ensure_future(live.done.wait()) for live in lives]
            _, still = await asyncio.wait(pending, timeout=grace)
            for fut in still:
                fut.cancel()
        for live in list(self._live.values()):
            self.request_cancel(live.id, SHUTDOWN)
        for live in list(self._live.values()):
            await live.done.wait()
        tasks = [live.task for live in lives if live.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
