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
   previous process are marked failed ("interrupted") and their daily token reservations
   released;
3. the RunManager. With ``auth: required`` and no active key, the log says that every
   protected request will get 401 and how to create a key.

Request bodies above ``max_body_bytes`` answer 413 (``body_limit``). ``/docs`` and
``/openapi.json`` follow the auth setting: with ``auth: required`` they need a key like the
API itself.

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
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from orchestrator.api import native_routes, openai_routes
from orchestrator.api.auth import NO_KEYS, require_key
from orchestrator.api.body_limit import BodyLimitMiddleware
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.prometheus import install_metrics
from orchestrator.api.runs import RunManager
from orchestrator.api.settings import ServiceSettings
from orchestrator.runner import Orchestrator
from orchestrator.specs import resolve_spec
from orchestrator.store.db import default_url, mask_url
from orchestrator.store.keys import ApiKey, KeyStore
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
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.given_orchestrator = orchestrator
    install_error_handlers(app)  # before the metrics middleware, which must see the 500s
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    install_metrics(app)  # the outermost middleware: it counts every answer, 413s included
    app.include_router(openai_routes.router)
    app.include_router(native_routes.router)
    _install_docs(app)
    return app


def _install_docs(app: FastAPI) -> None:
    """``/openapi.json`` and ``/docs`` behind ``require_key`` (see the module docstring)."""

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(key: Annotated[ApiKey | None, Depends(require_key)]) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(key: Annotated[ApiKey | None, Depends(require_key)]) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ttc API")


async def check_default_strategy(orch: Orchestrator, settings: ServiceSettings) -> None:
    """Fail fast (ConfigError / RegistryError / CapabilityError) when the default strategy
    cannot be built or does not fit the default backend: a server misconfiguration must stop
    the start, not answer every request with an error."""
    await orch.check(resolve_spec(None, settings.default_strategy))


async def _auth_line(settings: ServiceSettings, key_store: KeyStore) -> str:
    """How requests are authenticated, for the start-up log (a warning when none can pass)."""
    if settings.auth == "off":
        return "OFF (auth: off): every request is served without a key"
    if await key_store.any_active():
        return "required"
    log.warning("auth is required but no API key is active: %s", NO_KEYS)
    return "required, but NO active API key: every request but /healthz and /readyz gets 401"


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
        await key_store.release_stale()
        runs = RunManager(orch, run_store, app.state.metrics, settings, key_store=key_store)
        app.state.metrics.watch_backends(orch.built)
        app.state.orch, app.state.run_store, app.state.key_store = orch, run_store, key_store
        app.state.runs, app.state.started_at = runs, time.time()
        auth = await _auth_line(settings, key_store)
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
