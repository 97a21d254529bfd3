"""``ttc serve`` (run the REST service on uvicorn) and ``ttc keys`` (manage its API keys).

``ttc serve [--host 127.0.0.1] [--port 8000] [--config FILE] [--backends FILE] [--store URL]``
builds ``ServiceSettings`` (defaults < ``--config`` YAML or ``$TTC_SERVICE_CONFIG`` <
``TTC_SERVICE__*`` variables < flags), builds the backends, checks the default strategy against
the default backend, then runs ``create_app(settings)`` on uvicorn with
``timeout_graceful_shutdown`` = ``shutdown_grace_seconds`` (rounded up to whole seconds). On
SIGTERM or Ctrl-C uvicorn stops accepting connections and gives open requests that long to
finish; then the app's lifespan gives runs still in flight (e.g. background runs) the grace
again, cancels the rest (stored as ``cancelled`` with the reason) and closes the store and the
backends. So a shutdown takes at most about twice the grace, and no run is lost. After a clean
shutdown, Ctrl-C exits 0 and SIGTERM ends the process by that signal (uvicorn re-raises it, so
a supervisor sees "terminated by SIGTERM"); a failed startup (a backend or the store cannot be
started) exits 3.

At start it prints (stderr) where it listens, the store URL with its password masked, and
whether auth is on (at least one active API key in the store). Backends of the backends file
other than the default that cannot be built here (a missing ``api_key_env`` variable, missing
extras) are skipped with a warning, so the shipped ``configs/backends.yaml`` serves without
``OPENAI_API_KEY``; the default backend must build.

Binding a host that is not loopback while no API key exists is allowed, with a loud warning:
a service behind a reverse proxy or in a container must bind ``0.0.0.0`` while the network
keeps it private, and auth can be turned on without a restart (``ttc keys create`` on the same
store takes effect within about 5 s). Anyone who can reach an unauthenticated port can run
strategies and spend the backends' budget.

``ttc keys create NAME [--rpm N] [--daily-tokens N]`` prints the new key on stdout, alone (so
``KEY=$(ttc keys create ci)`` works), once: only its sha256 hash is stored. ``ttc keys list``
shows ids, names, display prefixes, status, limits and today's tokens; ``ttc keys revoke
ID|NAME`` revokes a key. Every ``keys`` command takes ``--store URL`` and ``--config FILE`` and
resolves the store as ``ttc serve`` does (``--store``, the settings' ``store_url``,
``$TTC_STORE_URL``, then ``<cache dir>/ttc.db``).

Exit codes, as for the rest of ``ttc``: 0 done, 1 ``keys revoke`` matched no active key,
2 bad input (settings, backends file, default strategy, key name or limits; raised as
ConfigError / RegistryError / CapabilityError for ``orchestrator.cli.main``), 3 the store cannot
be used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError, StoreError, TTCError

if TYPE_CHECKING:
    from orchestrator.api.settings import ServiceSettings
    from orchestrator.runner import Orchestrator
    from orchestrator.store.keys import ApiKey, KeyStore

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
AUTH_DELAY = "a running service notices within about 5 s"


def _say(msg: str) -> None:
    print(f"ttc: {msg}", file=sys.stderr, flush=True)


def _err(msg: str) -> None:
    print(f"ttc: error: {msg}", file=sys.stderr, flush=True)


def add_service_parsers(sub: Any) -> None:
    """Add the ``serve`` and ``keys`` subcommands to the ``ttc`` subparsers ``sub``."""
    s = sub.add_parser("serve", help="run the REST service (OpenAI-compatible and native API)")
    s.add_argument("--host", help="interface to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, help="TCP port (default 8000)")
    s.add_argument("--config", help="service settings YAML (default: $TTC_SERVICE_CONFIG)")
    s.add_argument(
        "--backends", help="backends file (default: $TTC_BACKENDS_FILE or configs/backends.yaml)"
    )
    s.add_argument("--store", help="runs and API keys database: a file path or a database URL")
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info")

    k = sub.add_parser("keys", help="manage the service's API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key and print it (once: it is not stored)")
    kc.add_argument("name", help="a name for the key (unique among the active keys)")
    kc.add_argument("--rpm", type=int, help="requests per minute allowed (default: no limit)")
    kc.add_argument(
        "--daily-tokens", type=int, help="tokens per UTC day allowed (default: no limit)"
    )
    kl = ksub.add_parser("list", help="list the keys (never the keys themselves)")
    kl.add_argument("--json", action="store_true", help="print one JSON array")
    kr = ksub.add_parser("revoke", help="revoke a key: requests with it get 401")
    kr.add_argument("key", metavar="ID|NAME", help="the key id, or the name of an active key")
    for parser in (kc, kl, kr):
        parser.add_argument("--store", help="the service's database: a file path or a URL")
        parser.add_argument("--config", help="service settings YAML (for its store_url)")


# -- serve -------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8,
    ``::1``); any other name or address, ``0.0.0.0`` included, is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def service_orchestrator(
    settings: ServiceSettings, say: Callable[[str], None] = _say
) -> Orchestrator:
    """The Orchestrator over the backends of ``settings.backends_file`` (see the module
    docstring: a non-default backend that cannot be built is skipped with a warning)."""
    from orchestrator.backends.kinds import create_backend
    from orchestrator.config import load_backends
    from orchestrator.runner import Orchestrator

    cfg = load_backends(settings.backends_file)
    default = settings.default_backend or cfg.default
    if default not in cfg.backends:
        raise ConfigError(
            f"default backend {default!r} is not declared; declared: "
            f"{', '.join(sorted(cfg.backends))}"
        )
    built = {}
    for name, backend_cfg in cfg.backends.items():
        if backend_cfg.kind == "embedded":
            backend_cfg.options.setdefault("progress", say)
        try:
            built[name] = create_backend(name, backend_cfg)
        except TTCError as exc:
            if name == default:
                raise
            say(f"WARNING: backend {name!r} is not served: {exc}")
    return Orchestrator(built, default)


async def _active_keys(url: str) -> list[ApiKey]:
    from orchestrator.store.keys import KeyStore

    async with KeyStore(url) as store:
        return await store.list(include_revoked=False)


def cmd_serve(args: argparse.Namespace) -> int:
    """``ttc serve``: run the service until SIGTERM / Ctrl-C (see the module docstring)."""
    import uvicorn

    from orchestrator.api import create_app
    from orchestrator.api.app import check_default_strategy
    from orchestrator.api.settings import ServiceSettings
    from orchestrator.store.db import default_url, mask_url, normalize_url

    settings = ServiceSettings.from_env(
        args.config,
        host=args.host,
        port=args.port,
        backends_file=args.backends,
        store_url=args.store,
    )
    url = normalize_url(settings.store_url or default_url())
    settings = settings.model_copy(update={"store_url": url})
    try:
        keys = asyncio.run(_active_keys(url))
    except StoreError as exc:
        _err(f"cannot open the store: {exc}")
        return 3
    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    orch = service_orchestrator(settings)
    try:
        asyncio.run(check_default_strategy(orch, settings))
    except BaseException:
        with contextlib.suppress(Exception):
            asyncio.run(orch.aclose())
        raise

    where = f"http://{_url_host(settings.host)}:{settings.port}"
    _say(f"serving on {where} (OpenAI-compatible base URL: {where}/v1)")
    _say(f"backends: {', '.join(orch.backends)} (default {orch.default_backend})")
    _say(f"store: {mask_url(url)}")
    if keys:
        _say(f"auth: ON ({len(keys)} active API key(s); send 'Authorization: Bearer <key>')")
    else:
        _say("auth: OFF (no API keys in the store; create one with `ttc keys create NAME`)")
        if not is_loopback(settings.host):
            _say(
                f"WARNING: {settings.host!r} is not a loopback address and NO API key exists: "
                "anyone who can reach this port can run strategies and spend the backends' "
                f"budget. Create a key (`ttc keys create NAME --store {mask_url(url)}`; "
                f"{AUTH_DELAY}), or bind 127.0.0.1 and put an authenticating proxy in front."
            )
    uvicorn.run(  # returns after a clean shutdown; exits 3 itself when the startup fails
        create_app(settings, orchestrator=orch),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# -- keys --------------------------------------------------------------------------------------


def keys_store_url(args: argparse.Namespace) -> str:
    """The store of ``ttc keys``: resolved as ``ttc serve`` resolves it."""
    from orchestrator.api.settings import ServiceSettings
    from orchestrator.store.db import default_url, normalize_url

    settings = ServiceSettings.from_env(args.config, store_url=args.store)
    return normalize_url(settings.store_url or default_url())


def cmd_keys(args: argparse.Namespace) -> int:
    """``ttc keys create|list|revoke`` (see the module docstring)."""
    url = keys_store_url(args)
    try:
        return asyncio.run(_keys(args, url))
    except StoreError as exc:
        _err(str(exc))
        return 3


async def _keys(args: argparse.Namespace, url: str) -> int:
    from orchestrator.store.keys import KeyStore

    async with KeyStore(url) as store:
        if args.keys_command == "create":
            return await _create(store, args)
        if args.keys_command == "list":
            return await _list(store, args.json)
        return await _revoke(store, args.key)


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    first = not await store.any_active()
    key, plaintext = await store.create(
        args.name, rpm_limit=args.rpm, daily_token_limit=args.daily_tokens
    )
    limits = f"rpm limit {_limit(key.rpm_limit)}, daily tokens {_limit(key.daily_token_limit)}"
    _say(f"created API key {key.name!r} (id {key.id}, prefix {key.prefix}, {limits})")
    print(plaintext, flush=True)
    _say(
        "this key is shown ONCE: it is not stored (only its hash is) and cannot be shown again. "
        "Send it as 'Authorization: Bearer <key>'."
    )
    if first:
        _say(f"auth is now ON for services on {store.masked_url} ({AUTH_DELAY})")
    return 0


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


async def _list(store: KeyStore, as_json: bool) -> int:
    keys = await store.list()
    today = {k.id: await store.tokens_today(k.id) for k in keys}
    if as_json:
        rows = [{**k.model_dump(mode="json"), "tokens_today": today[k.id]} for k in keys]
        print(json.dumps(rows))
        return 0
    if not keys:
        _say(f"no API keys in {store.masked_url}: auth is off")
        return 0
    header = ("ID", "NAME", "PREFIX", "STATUS", "RPM", "DAILY TOKENS", "TODAY", "CREATED")
    rows_text = [
        (
            k.id,
            k.name,
            k.prefix,
            "active" if k.active else "revoked",
            _limit(k.rpm_limit),
            _limit(k.daily_token_limit),
            str(today[k.id]),
            k.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in (header, *rows_text)) for i in range(len(header))]
    for row in (header, *rows_text):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _revoke(store: KeyStore, target: str) -> int:
    if not await store.revoke(target):
        _err(f"no active API key with id or name {target!r} (see `ttc keys list`)")
        return 1
    _say(f"revoked API key {target!r}: requests with it get 401 ({AUTH_DELAY})")
    if not await store.any_active():
        _say(f"no active API key remains: auth is now OFF for services on {store.masked_url}")
    return 0
