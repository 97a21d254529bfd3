"""``ttc keys``: manage the REST service's API keys.

``ttc keys create NAME [--rpm N] [--daily-tokens N] [--scope GRANT ...]`` prints the new key on
stdout, alone (so ``KEY=$(ttc keys create ci)`` works), once: only its sha256 hash is stored.
A ``--scope`` grants the key a privileged config field (``orchestrator.trust``): a privilege
(``network``, ``client_code``, ...) or one field (``verifier.unit_tests.tests``). ``ttc keys list``
shows ids, names, display prefixes, status, limits and today's tokens; ``ttc keys revoke
ID|NAME`` revokes a key. Every ``keys`` command takes ``--store URL`` and ``--config FILE`` and
resolves the store as ``ttc serve`` does (``--store``, the settings' ``store_url``,
``$TTC_STORE_URL``, then ``<cache dir>/ttc.db``).

Exit codes, as for the rest of ``ttc``: 0 done, 1 ``keys revoke`` matched no active key,
2 bad input (settings, key name or limits), 3 the store cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from orchestrator.api.settings import ServiceSettings
from orchestrator.cli.common import err, say
from orchestrator.errors import StoreError
from orchestrator.store.db import default_url, normalize_url
from orchestrator.store.keys import ApiKey, KeyStore
from orchestrator.trust import PRIVILEGES, check_grant

AUTH_DELAY = "a running service notices within about 5 s"


def register(sub: Any) -> None:
    """Add ``keys`` and its subcommands to the ``ttc`` subparsers."""
    k = sub.add_parser("keys", help="manage the service's API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key and print it (once: it is not stored)")
    kc.add_argument("name", help="a name for the key (unique among the active keys)")
    kc.add_argument("--rpm", type=int, help="requests per minute allowed (default: no limit)")
    kc.add_argument(
        "--daily-tokens", type=int, help="tokens per UTC day allowed (default: no limit)"
    )
    kc.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="GRANT",
        help="a privileged config field this key may set: a privilege ("
        + ", ".join(PRIVILEGES)
        + ") or one field as strategy|verifier.<name>.<field>; repeat for several",
    )
    kl = ksub.add_parser("list", help="list the keys (never the keys themselves)")
    kl.add_argument("--json", action="store_true", help="print one JSON array")
    kr = ksub.add_parser("revoke", help="revoke a key: requests with it get 401")
    kr.add_argument("key", metavar="ID|NAME", help="the key id, or the name of an active key")
    for parser in (kc, kl, kr):
        parser.add_argument("--store", help="the service's database: a file path or a URL")
        parser.add_argument("--config", help="service settings YAML (for its store_url)")
    k.set_defaults(func=cmd_keys)


async def active_keys(url: str) -> list[ApiKey]:
    """The active API keys of the store at ``url`` (``ttc serve`` reports whether auth is on)."""
    async with KeyStore(url) as store:
        return await store.list(include_revoked=False)


def keys_store_url(args: argparse.Namespace) -> str:
    """The store of ``ttc keys``: resolved as ``ttc serve`` resolves it."""
    settings = ServiceSettings.from_env(args.config, store_url=args.store)
    return normalize_url(settings.store_url or default_url())


def cmd_keys(args: argparse.Namespace) -> int:
    """``ttc keys create|list|revoke`` (see the module docstring)."""
    url = keys_store_url(args)
    try:
        return asyncio.run(_keys(args, url))
    except StoreError as exc:
        err(str(exc))
        return 3


async def _keys(args: argparse.Namespace, url: str) -> int:
    async with KeyStore(url) as store:
        if args.keys_command == "create":
            return await _create(store, args)
        if args.keys_command == "list":
            return await _list(store, args.json)
        return await _revoke(store, args.key)


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    try:
        scopes = [check_grant(scope) for scope in args.scope]
    except ValueError as exc:
        err(f"--scope: {exc}")
        return 2
    first = not await store.any_active()
    key, plaintext = await store.create(
        args.name, rpm_limit=args.rpm, daily_token_limit=args.daily_tokens, scopes=scopes
    )
    limits = f"rpm limit {_limit(key.rpm_limit)}, daily tokens {_limit(key.daily_token_limit)}"
    if key.scopes:
        limits += f", scopes {', '.join(key.scopes)}"
    say(f"created API key {key.name!r} (id {key.id}, prefix {key.prefix}, {limits})")
    print(plaintext, flush=True)
    say(
        "this key is shown ONCE: it is not stored (only its hash is) and cannot be shown again. "
        "Send it as 'Authorization: Bearer <key>'."
    )
    if first:
        say(f"the first active key of {store.masked_url}: services requiring auth now accept it "
            f"({AUTH_DELAY})")  # fmt: skip
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
        say(f"no API keys in {store.masked_url}: services requiring auth refuse every request")
        return 0
    header = ("ID", "NAME", "PREFIX", "STATUS", "RPM", "DAILY TOKENS", "TODAY", "SCOPES", "CREATED")
    rows_text = [
        (
            k.id,
            k.name,
            k.prefix,
            "active" if k.active else "revoked",
            _limit(k.rpm_limit),
            _limit(k.daily_token_limit),
            str(today[k.id]),
            ",".join(k.scopes) or "-",
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
        err(f"no active API key with id or name {target!r} (see `ttc keys list`)")
        return 1
    say(f"revoked API key {target!r}: requests with it get 401 ({AUTH_DELAY})")
    if not await store.any_active():
        say(
            f"no active API key remains in {store.masked_url}: services requiring auth now "
            "answer every protected request with 401"
        )
    return 0
