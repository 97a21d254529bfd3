"""Fixtures of the service tests: the real app on a FakeBackend named ``local``, in process.

``app``: ``create_app`` (``auth: off`` unless a test asks otherwise) with a SQLite store in
``tmp_path``, its lifespan entered (backends
started, stores open, RunManager ready) and left at teardown. ``backend`` is its FakeBackend:
a test may change ``latency``, ``fail_rate``, ``script`` ... before sending requests.
``client``: an ``httpx.AsyncClient`` on the app through ``ASGITransport`` (no network).
``make_app``: the same for other backends or settings (an async context manager).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from orchestrator.api import create_app
from orchestrator.api.settings import ServiceSettings
from orchestrator.backends.base import Backend
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend

MakeApp = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite store file of this test."""
    return f"sqlite:///{tmp_path / 'ttc.db'}"


@pytest.fixture
def make_app(store_url: str) -> MakeApp:
    """``make_app(*backends, **settings)``: a started app (lifespan entered) over the backends
    (default: one FakeBackend ``local``), on this test's store unless ``store_url`` is given."""

    @asynccontextmanager
    async def make(*backends: Backend, **settings: Any) -> AsyncIterator[FastAPI]:
        settings.setdefault("store_url", store_url)
        settings.setdefault("shutdown_grace_seconds", 1.0)
        settings.setdefault("auth", "off")
        orch = Orchestrator(list(backends) or [FakeBackend(name="local")])
        app = create_app(ServiceSettings(**settings), orchestrator=orch)
        async with app.router.lifespan_context(app):
            yield app

    return make


@pytest.fixture
def backend() -> FakeBackend:
    """The app's backend: answers 42 most of the time (see FakeBackend's defaults)."""
    return FakeBackend(name="local")


@pytest.fixture
async def app(make_app: MakeApp, backend: FakeBackend) -> AsyncIterator[FastAPI]:
    """The started app over ``backend``."""
    async with make_app(backend) as started:
        yield started


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``app`` (in process)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
