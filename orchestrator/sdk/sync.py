"""``Client``: the blocking SDK, a thin wrapper running one ``AsyncClient`` on a loop thread.

Every method submits the ``AsyncClient`` coroutine of the same name to a private event loop
running in a daemon thread and blocks for its result, so there is exactly one implementation
of each call. Consequences: a Client works from any thread that has no running event loop
(and from several threads at once); called from a coroutine it raises ``RuntimeError`` rather
than blocking that loop; Ctrl-C while waiting cancels the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import httpx

from orchestrator.sdk.client import UNSET, AsyncClient, Timeout
from orchestrator.sdk.models import RunEvent, RunInfo, RunResult, StrategyInfo, VerifierInfo

P = ParamSpec("P")
T = TypeVar("T")

IN_LOOP_MESSAGE = (
    "orchestrator.Client is synchronous and would block the running event loop; inside async "
    "code use orchestrator.AsyncClient instead (e.g. `async with AsyncClient(...) as ttc: "
    "await ttc.reason(...)`)"
)


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop the private loop and its thread, then close the loop (finalizer; idempotent)."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join(timeout=10)
    if not thread.is_alive() and not loop.is_closed():
        loop.close()


class Client:
    """Synchronous client of the ttc service: ``AsyncClient``'s methods, blocking.

    Arguments as for ``AsyncClient``. Use as ``with Client() as ttc:`` or call ``close()``; an
    unclosed Client stops its thread when garbage-collected.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.aio = AsyncClient(
            base_url, api_key, timeout, transport, max_retries=max_retries, headers=headers
        )
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ttc-sdk", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop, self._loop, self._thread)

    @property
    def base_url(self) -> str:
        """The service root."""
        return self.aio.base_url

    def _run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the private loop and block for its result."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(IN_LOOP_MESSAGE)
        if self._closed:
            raise RuntimeError("this orchestrator.Client is closed")

        async def call() -> T:
            return await fn(*args, **kwargs)

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return future.result()
        except BaseException:  # incl. KeyboardInterrupt: do not leave the request running
            future.cancel()
            raise

    def reason(
        self,
        problem: Any,
        strategy: str | Mapping[str, Any] | None = None,
        budget: Any = None,
        *,
        backend: str | None = None,
        model: str | None = None,
        seed: int | None = None,
        timeout: Timeout = UNSET,
        **options: Any,
    ) -> RunResult:
        """Solve ``problem`` and wait for the result; see ``AsyncClient.reason``."""
        return self._run(
            self.aio.reason,
            problem,
            strategy,
            budget,
            backend=backend,
            model=model,
            seed=seed,
            timeout=timeout,
            **options,
        )

    def create_run(
        self,
        problem: Any,
        strategy: str | Mapping[str, Any] | None = None,
        budget: Any = None,
        *,
        backend: str | None = None,
        model: str | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> str:
        """Start a background run and return its id; see ``AsyncClient.create_run``."""
        return self._run(
            self.aio.create_run,
            problem,
            strategy,
            budget,
            backend=backend,
            model=model,
            seed=seed,
            **options,
        )

    def get_run(self, run_id: str) -> RunInfo:
        """See ``AsyncClient.get_run``."""
        return self._run(self.aio.get_run, run_id)

    def list_runs(self, *, limit: int = 50, status: str | None = None) -> list[RunInfo]:
        """See ``AsyncClient.list_runs``."""
        return self._run(self.aio.list_runs, limit=limit, status=status)

    def cancel(self, run_id: str) -> RunInfo:
        """See ``AsyncClient.cancel``."""
        return self._run(self.aio.cancel, run_id)

    def wait(
        self, run_id: str, timeout: float | None = None, poll: float = 0.5, *, stream: bool = True
    ) -> RunInfo:
        """See ``AsyncClient.wait``."""
        return self._run(self.aio.wait, run_id, timeout, poll, stream=stream)

    def events(self, run_id: str) -> Generator[RunEvent, None, None]:
        """See ``AsyncClient.events``. Closing the iterator (or leaving a ``for``) closes the
        stream."""
        agen = self.aio.events(run_id)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                # closed from inside an event loop: RuntimeError; the GC finishes the stream
                with contextlib.suppress(RuntimeError):
                    self._run(agen.aclose)

    def strategies(self) -> list[StrategyInfo]:
        """See ``AsyncClient.strategies``."""
        return self._run(self.aio.strategies)

    def verifiers(self) -> list[VerifierInfo]:
        """See ``AsyncClient.verifiers``."""
        return self._run(self.aio.verifiers)

    def health(self) -> dict[str, Any]:
        """See ``AsyncClient.health``."""
        return self._run(self.aio.health)

    def ready(self) -> dict[str, Any]:
        """See ``AsyncClient.ready``."""
        return self._run(self.aio.ready)

    def close(self) -> None:
        """Close the connection pool and stop the loop thread (idempotent)."""
        if self._closed:
            return
        try:
            self._run(self.aio.aclose)
        finally:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
