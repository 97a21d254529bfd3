"""The app under test for the native-API tests: the real service on FakeBackends, in process.

``serve(tmp_path, *backends)`` builds the app with ``orchestrator.api.create_app`` (the real
factory, with a SQLite store in ``tmp_path``), runs its lifespan and yields a ``Service`` with an
``httpx.AsyncClient`` on it (ASGI transport, no network). ``sse_events`` parses a
``text/event-stream`` body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from orchestrator.api import create_app
from orchestrator.api.auth import auth_state
from orchestrator.api.settings import ServiceSettings
from orchestrator.backends.base import Backend
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend


@dataclass
class Service:
    """A running app and a client on it."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def state(self) -> Any:
        """``app.state``: settings, orch, runs, run_store, key_store, metrics."""
        return self.app.state

    async def create_key(self, name: str = "k", **limits: int) -> str:
        """Create an API key in the service's KeyStore and return its plaintext."""
        _, plaintext = await self.state.key_store.create(name, **limits)
        auth_state(self.state).invalidate()
        return plaintext


def settings_for(tmp_path: Path, **fields: Any) -> ServiceSettings:
    """ServiceSettings on a SQLite store in ``tmp_path`` (``auth: off`` unless given)."""
    fields.setdefault("auth", "off")
    return ServiceSettings(store_url=str(tmp_path / "ttc.db"), **fields)


@asynccontextmanager
async def serve(
    tmp_path: Path, *backends: Backend, auth_cache_seconds: float = 0.0, **fields: Any
) -> AsyncIterator[Service]:
    """The app with its lifespan running (default backend: ``FakeBackend(name="local")``;
    ``auth: off`` unless ``auth="required"`` is given).

    ``auth_cache_seconds=0`` makes key creation and revocation take effect at once.
    """
    fields.setdefault("shutdown_grace_seconds", 1.0)
    fields.setdefault("auth", "off")
    orch = Orchestrator(list(backends) or [FakeBackend(name="local")])
    app = create_app(settings_for(tmp_path, **fields), orchestrator=orch)
    async with app.router.lifespan_context(app):
        auth_state(app.state).cache_seconds = auth_cache_seconds
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Service(app, client)


def sse_events(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body: ``{"event", "id", "data"}`` with ``data`` parsed as JSON."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        data: list[str] = []
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        if data:
            events.append({**fields, "data": json.loads("\n".join(data))})
    return events
