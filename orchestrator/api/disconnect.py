"""The client-disconnect race of the synchronous run routes (OpenAI and native), written once.

``await until_disconnect(request, work)`` awaits ``work`` (a coroutine, e.g. ``runs.run(req)``)
while watching the connection. If the client disconnects first, ``work`` is cancelled (so its
runs are cancelled), awaited to its end (its exception retrieved: nobody is left to answer it)
and :class:`ClientDisconnected` is raised; the route answers ``CLIENT_GONE`` (499, the status
nginx logs for a client that closed the request). If the route itself is cancelled, ``work`` is
cancelled too and the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")

log = logging.getLogger(__name__)

CLIENT_GONE = 499
"""The status logged for a request whose client went away before the answer."""


class ClientDisconnected(Exception):
    """The client went away before the work finished; the work was cancelled."""


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client disconnects (the request body was already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """``await work`` unless the client disconnects first (see the module docstring).

    Raises:
        ClientDisconnected: the client went away; ``work`` was cancelled and has ended.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the route is cancelled: the work goes with it
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(BaseException):
            await task  # its end, and its exception retrieved
        log.info("client disconnected; its run was cancelled")
        raise ClientDisconnected
    return task.result()
