"""What the service offers and whether it can serve: registry listings and readiness probes.

Registry listings (``GET /v1/strategies``, ``GET /v1/verifiers``): one dict per registered name
with ``name``, ``description`` (the class docstring's first paragraph), ``config_schema`` (the
pydantic Config's JSON schema) and ``requires`` (capability names the backend must offer: a
strategy's class ``requires``, a verifier's ``candidate_needs`` of the sampling backend).
Strategies have ``kind: "strategy"``; the named configs of ``configs/strategies/*.yaml`` follow with
``kind: "config"``, their ``spec``, the base strategy's schema, and ``requires`` collected over
the whole strategy tree the spec builds.

Readiness probes (``GET /readyz``) return ``{"ready": bool, "kind": str, "detail": str}``, never
raise (except ``CancelledError``) and give up after ``timeout`` seconds:

* A backend with a ``ping(timeout)`` coroutine method (a plugin's hook) is ready when it returns
  without raising.
* ``openai`` kind: the server answers ``GET <base_url>/models``. Any HTTP answer below 500 other
  than 401/403 counts as reachable (a server without ``/models`` is still up); a refused
  connection, a timeout, a 5xx or an authentication failure does not. The request goes through
  the backend's own client (same base URL, key and transport), without retries.
* ``vllm`` kind (the in-process engine, also the ``embedded`` model): the engine is started and,
  when vLLM offers ``check_health``, healthy.
* Any other kind (``fake``, in-process plugins): ready.
* The run store: a one-row listing answers.

Details never name a base URL or quote an upstream body (``hygiene.scrub``). :class:`Readiness`
caches one probe of everything for ``settings.readyz_cache_seconds`` (concurrent callers share
a probe in flight), so ``/readyz`` cannot be used to make the service hammer its backends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import openai

from orchestrator.api.hygiene import logged, scrub
from orchestrator.api.policy import public_spec
from orchestrator.backends.base import Backend, Capabilities
from orchestrator.registry import strategies, verifiers
from orchestrator.specs import Catalog
from strategies.base import Strategy, build_strategy

log = logging.getLogger(__name__)


# -- registries --------------------------------------------------------------------------------


def _description(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def needed(caps: Capabilities) -> list[str]:
    """Names of the capabilities ``caps`` asks for (``top_logprobs>=k`` for a count)."""
    return Capabilities().missing(caps)


async def tree_needs(spec: dict[str, Any]) -> list[str]:
    """The capabilities any node of the strategy tree built from ``spec`` needs."""
    strategy = build_strategy(spec)
    try:
        names: set[str] = set()
        stack: list[Strategy] = [strategy]
        while stack:
            node = stack.pop()
            names.update(needed(node.backend_needs()))
            stack.extend(node.children())
        return sorted(names)
    finally:
        await strategy.aclose()


async def strategy_infos(catalog: Catalog) -> list[dict[str, Any]]:
    """Every registered strategy, then every named config of ``catalog``."""
    out: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": "strategy",
            "description": _description(cls),
            "config_schema": cls.Config.model_json_schema(),
            "requires": needed(cls.requires),
        }
        for name, cls in strategies.items()
    ]
    for name in catalog.names():
        if name in strategies:
            continue
        try:
            full = catalog.load(name)
            base = strategies.get(str(full.get("strategy")))
            requires = await tree_needs(full)
            spec = public_spec(full)
        except Exception as exc:  # a broken config file must not break the listing
            log.warning("skipping named strategy config %s: %s", catalog.path(name), exc)
            continue
        out.append(
            {
                "name": name,
                "kind": "config",
                "description": f"named config of {base.name}: {json.dumps(spec)}",
                "config_schema": base.Config.model_json_schema(),
                "requires": requires,
                "spec": spec,
            }
        )
    return out


def verifier_infos() -> list[dict[str, Any]]:
    """Every registered verifier."""
    return [
        {
            "name": name,
            "description": _description(cls),
            "config_schema": cls.Config.model_json_schema(),
            "requires": needed(cls.candidate_needs),
        }
        for name, cls in verifiers.items()
    ]


# -- readiness ---------------------------------------------------------------------------------


class NotReady(Exception):
    """A probe found the component unable to serve; the message says why."""


async def _ping_openai(backend: Backend, timeout: float) -> str:
    client = getattr(backend, "_client", None)
    if not isinstance(client, openai.AsyncOpenAI):
        raise NotReady("the backend has no OpenAI client")
    try:
        await client.with_options(timeout=timeout, max_retries=0).models.list()
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in (401, 403):
            raise NotReady(f"GET /models answered HTTP {exc.status_code}") from exc
        return f"reachable (GET /models answered HTTP {exc.status_code})"
    except openai.APITimeoutError as exc:
        raise NotReady(f"GET /models timed out after {timeout}s") from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise NotReady(f"cannot reach the server ({type(cause).__name__})") from exc
    return "reachable"


async def _check_engine(backend: Backend) -> str:
    try:
        engine = getattr(backend, "engine")  # noqa: B009 - raises BackendError until started
    except Exception as exc:
        raise NotReady(f"engine not started: {exc}") from exc
    if getattr(engine, "errored", False):
        raise NotReady("the engine has errored")
    check = getattr(engine, "check_health", None)
    if callable(check):
        try:
            await check()
        except Exception as exc:
            raise NotReady(f"engine unhealthy: {exc}") from exc
    return "engine started"


async def _probe(backend: Backend, timeout: float) -> str:
    ping = getattr(backend, "ping", None)
    if callable(ping):
        await ping(timeout)
        return "ping answered"
    if backend.kind == "openai":
        return await _ping_openai(backend, timeout)
    if backend.kind == "vllm":
        return await _check_engine(backend)
    return "in-process"


async def probe_backend(backend: Backend, timeout: float) -> dict[str, Any]:
    """Whether ``backend`` can serve now (see the module docstring)."""
    kind = backend.kind or type(backend).__name__
    try:
        async with asyncio.timeout(timeout):
            detail = await _probe(backend, timeout)
    except TimeoutError:
        return {"ready": False, "kind": kind, "detail": f"no answer within {timeout}s"}
    except Exception as exc:
        return {"ready": False, "kind": kind, "detail": scrub(str(exc)) or type(exc).__name__}
    return {"ready": True, "kind": kind, "detail": detail}


async def probe_store(store: Any, timeout: float) -> dict[str, Any]:
    """Whether the run store answers a one-row listing (None: not opened)."""
    if store is None:
        return {"ready": False, "kind": "store", "detail": "not opened"}
    try:
        async with asyncio.timeout(timeout):
            await store.list(limit=1, include_result=False)
    except TimeoutError:
        return {"ready": False, "kind": "store", "detail": f"no answer within {timeout}s"}
    except Exception as exc:
        error_id = logged("readiness probe of the store", exc)
        return {"ready": False, "kind": "store", "detail": f"failing (error id {error_id})"}
    return {"ready": True, "kind": "store", "detail": "answering"}


class Readiness:
    """One cached probe of every backend and the store (see the module docstring).

    Args:
        ttl: seconds a probe result is reused.
        timeout: seconds each probe may take.
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self, ttl: float, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.timeout, self.clock = ttl, timeout, clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def checks(self, backends: Mapping[str, Backend], store: Any) -> dict[str, Any]:
        """``{"backends": {name: probe}, "store": probe}``, at most ``ttl`` seconds old."""
        async with self._lock:
            now = self.clock()
            if self._cached is not None and now < self._cached[0]:
                return self._cached[1]
            names = list(backends)
            probes = await asyncio.gather(
                *(probe_backend(backends[n], self.timeout) for n in names),
                probe_store(store, self.timeout),
            )
            checks = {"backends": dict(zip(names, probes[:-1], strict=True)), "store": probes[-1]}
            self._cached = (self.clock() + self.ttl, checks)
            return checks
