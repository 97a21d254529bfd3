"""The FastAPI app factory and its lifespan.

``create_app(settings, orchestrator=None)`` builds the app; nothing is opened until the lifespan
starts (uvicorn, or ``async with app.router.lifespan_context(app)`` in tests):

1. the Orchestrator: the one given (``ttc serve``, tests) or ``Orchestrator.from_config(
   settings.backends_file, default_backend=settings.default_backend)``; either way the lifespan
   starts its default backend (the others start with the first run that uses them) and closes
   it (a given orchestrator is owned by the app from then on). The default strategy is built and
   checked against the default backend first: a misconfigured default stops the start;
2. the RunStore and the KeyStore on ``settings.store_url`` (default: the store of
   ``orchestrator.store.db.default_url()``), migrated; runs left queued or running by a
   previous process are marked failed ("interrupted");
3. the RunManager.

State: ``app.state.settings``, ``.metrics`` (ServiceMetrics, from the factory), ``.orch``,
``.run_store``, ``.key_store``, ``.runs`` and ``.started_at`` (epoch seconds).

Shutdown: the RunManager refuses new runs, waits up to ``settings.shutdown_grace_seconds`` for
those in flight, cancels the rest (stored as cancelled with the reason), then the stores and the
backends are closed. Run uvicorn with ``timeout_graceful_shutdown`` set to the same grace, so
that open requests are not waited for forever before the lifespan shutdown starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from orchestrator.api import native_routes, openai_routes
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.prometheus import install_metrics
from orchestrator.api.runs import RunManager
from orchestrator.api.settings import ServiceSettings
from orchestrator.runner import Orchestrator
from orchestrator.specs import resolve_spec
from orchestrator.store.db import default_url, mask_url
from orchestrator.store.keys import KeyStore
from orchestrator.store.run_store import RunStore

log = logging.getLogger("orchestrator.api")

INTERRUPTED = "the service restarted while this run was in flight"


def create_app(
    settings: ServiceSettings | None = None, *, orchestrator: Orchestrator | None = None
) -> FastAPI:
    """The ttc service app (see the module docstring). ``settings`` default:
    ``ServiceSettings.from_env()``."""
    settings = settings if settings is not None else ServiceSettings.from_env()
    app = FastAPI(
        title="ttc",
        summary="Test-time compute strategies behind an OpenAI-compatible and a native API",
        version="0.1.0",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.given_orchestrator = orchestrator
    install_error_handlers(app)  # before the metrics middleware, which must see the 500s
    install_metrics(app)
    app.include_router(openai_routes.router)
    app.include_router(native_routes.router)
    return app


async def check_default_strategy(orch: Orchestrator, settings: ServiceSettings) -> None:
    """Fail fast (ConfigError / RegistryError / CapabilityError) when the default strategy
    cannot be built or does not fit the default backend: a server misconfiguration must stop
    the start, not answer every request with an error."""
    await orch.check(resolve_spec(None, settings.default_strategy))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServiceSettings = app.state.settings
    async with AsyncExitStack() as stack:
        orch = app.state.given_orchestrator
        if orch is None:
            orch = Orchestrator.from_config(
                settings.backends_file, default_backend=settings.default_backend
            )
        stack.push_async_callback(orch.aclose)
        await check_default_strategy(orch, settings)
        await orch.start()
        url = settings.store_url or default_url()
        run_store = RunStore(url)
        stack.push_async_callback(run_store.aclose)
        await run_store.open()
        key_store = KeyStore(url)
        stack.push_async_callback(key_store.aclose)
        await key_store.open()
        interrupted = await run_store.fail_interrupted(INTERRUPTED)
        if interrupted:
            log.warning("%d run(s) interrupted by the previous shutdown marked failed", interrupted)
        runs = RunManager(orch, run_store, app.state.metrics, settings, key_store=key_store)
        app.state.orch, app.state.run_store, app.state.key_store = orch, run_store, key_store
        app.state.runs, app.state.started_at = runs, time.time()
        auth = "on" if await key_store.any_active() else "OFF (no API keys configured)"
        log.info(
            "ttc service ready: backends %s (default %s), store %s, auth %s",
            ", ".join(orch.backends),
            orch.default_backend,
            mask_url(run_store.url),
            auth,
        )
        try:
            yield
        finally:
            log.info("ttc service stopping: %d run(s) in flight", runs.in_flight)
            await runs.shutdown(settings.shutdown_grace_seconds)
