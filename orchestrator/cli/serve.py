"""``ttc serve``: run the REST service on uvicorn.

``ttc serve [--host 127.0.0.1] [--port 8000] [--config FILE] [--backends FILE] [--store URL]``
builds ``ServiceSettings`` (defaults < ``--config`` YAML or ``$TTC_SERVICE_CONFIG`` <
``TTC_SERVICE__*`` variables < flags), the Orchestrator (``Orchestrator.from_config``), checks
the default strategy against the default backend (before any engine starts), then runs
``create_app(settings)`` on uvicorn with ``timeout_graceful_shutdown`` =
``shutdown_grace_seconds`` (rounded up to whole seconds). On SIGTERM or Ctrl-C uvicorn stops
accepting connections and gives open requests that long to finish; then the app's lifespan
gives runs still in flight (e.g. background runs) the grace again, cancels the rest (stored as
``cancelled`` with the reason) and closes the store and the backends. So a shutdown takes at
most about twice the grace, and no run is lost. After a clean shutdown, Ctrl-C exits 0 and
SIGTERM ends the process by that signal (uvicorn re-raises it, so a supervisor sees "terminated
by SIGTERM"); a failed startup (a backend or the store cannot be started) exits 3.

At start it prints (stderr) where it listens, the store URL with its password masked, and how
auth stands. Declared backends other than the
default that cannot be built here (a missing ``api_key_env`` variable, missing extras) are
reported with a warning and refused to the runs that name them, so the shipped
``configs/backends.yaml`` serves without ``OPENAI_API_KEY``; the default backend must build.

Auth fails closed: with ``auth: required`` (the default) and no active key in the store, the
service starts but answers every protected request 401 and says so here (``ttc keys create`` on
the same store takes effect within about 5 s). ``auth: off`` on a host that is not loopback
exits 2 unless ``--insecure`` is given (a service behind an authenticating proxy, on a private
network): anyone who can reach an unauthenticated port can run strategies and spend the
backends' budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
from typing import Any

import uvicorn

from orchestrator.api.app import check_default_strategy, create_app
from orchestrator.api.settings import ServiceSettings
from orchestrator.cli.common import err, say
from orchestrator.cli.keys import AUTH_DELAY, active_keys
from orchestrator.errors import StoreError, TTCError
from orchestrator.runner import Orchestrator
from orchestrator.store.db import default_url, mask_url, normalize_url

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def register(sub: Any) -> None:
    """Add ``serve`` to the ``ttc`` subparsers."""
    s = sub.add_parser("serve", help="run the REST service (OpenAI-compatible and native API)")
    s.add_argument("--host", help="interface to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, help="TCP port (default 8000)")
    s.add_argument("--config", help="service settings YAML (default: $TTC_SERVICE_CONFIG)")
    s.add_argument(
        "--backends", help="backends file (default: $TTC_BACKENDS_FILE or configs/backends.yaml)"
    )
    s.add_argument("--store", help="runs and API keys database: a file path or a database URL")
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow `auth: off` on an interface that is not loopback (behind an authenticating "
        "proxy or on a private network only)",
    )
    s.set_defaults(func=cmd_serve, own_signals=True)


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8,
    ``::1``); any other name or address, ``0.0.0.0`` included, is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def build_declared(orch: Orchestrator) -> None:
    """Build (not start) every declared backend, so that one that cannot be built is reported
    now (see the module docstring); the default one must build."""
    for name in orch.backends:
        try:
            orch.resolve(name)
        except TTCError as exc:
            if name == orch.default_backend:
                raise
            say(f"WARNING: backend {name!r} is not served: {exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    """``ttc serve``: run the service until SIGTERM / Ctrl-C (see the module docstring)."""
    settings = ServiceSettings.from_env(
        args.config,
        host=args.host,
        port=args.port,
        backends_file=args.backends,
        store_url=args.store,
    )
    url = normalize_url(settings.store_url or default_url())
    settings = settings.model_copy(update={"store_url": url})
    if settings.auth == "off" and not is_loopback(settings.host) and not args.insecure:
        err(
            f"refusing to serve without auth on {settings.host!r}, which is not a loopback "
            "address: anyone who can reach it could run strategies and spend the backends' "
            "budget. Fix: set `auth: required` and create a key (`ttc keys create NAME`), "
            "bind 127.0.0.1, or pass --insecure behind an authenticating proxy"
        )
        return 2
    try:
        keys = asyncio.run(active_keys(url))
    except StoreError as exc:
        err(f"cannot open the store: {exc}")
        return 3
    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    orch = Orchestrator.from_config(
        settings.backends_file, default_backend=settings.default_backend, progress=say
    )
    try:
        asyncio.run(check_default_strategy(orch, settings))  # before any backend is built
        build_declared(orch)
    except BaseException:
        with contextlib.suppress(Exception):
            asyncio.run(orch.aclose())
        raise
    _announce(settings, orch, len(keys))
    uvicorn.run(  # returns after a clean shutdown; exits 3 itself when the startup fails
        create_app(settings, orchestrator=orch),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )
    return 0


def _announce(settings: ServiceSettings, orch: Orchestrator, keys: int) -> None:
    """Where the service listens, its backends and store, and how auth stands."""
    url = settings.store_url or ""
    where = f"http://{_url_host(settings.host)}:{settings.port}"
    say(f"serving on {where} (OpenAI-compatible base URL: {where}/v1)")
    say(f"backends: {', '.join(orch.built())} (default {orch.default_backend})")
    say(f"store: {mask_url(url)}")
    if settings.auth == "off":
        say("auth: OFF (auth: off in the settings): every request is served without a key")
        if not is_loopback(settings.host):
            say(
                f"WARNING: {settings.host!r} is not a loopback address and auth is off (--insecure)"
            )
        return
    if keys:
        say(f"auth: required ({keys} active API key(s); send 'Authorization: Bearer <key>')")
        return
    say(
        "auth: required, but NO active API key: every request but /healthz and /readyz gets "
        f"401. Create one with `ttc keys create NAME --store {mask_url(url)}` ({AUTH_DELAY}), "
        "or set `auth: off` for a loopback-only service"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
