"""A backend for any OpenAI-compatible HTTP server: vLLM's server, OpenAI, and the rest.

Transport is the official ``openai.AsyncOpenAI`` client with its own retries switched off; this
module owns concurrency (a semaphore), rate (a throttler spacing requests ``1/rps`` apart),
per-attempt timeouts and retries (see ``_retry``). Chat requests go to ``/chat/completions``,
raw prompts to the legacy ``/completions``. A server that returns fewer choices than ``n`` is
topped up with further requests; without ``native_n`` the backend sends ``n`` requests of
``n=1`` concurrently. Top-up and fan-out requests shift ``seed`` by the index of their first
sample, so a seeded request stays reproducible without repeating samples. When a top-up or some
of the fan-out requests fail after others succeeded, the call returns what it got (fewer than
``n``, as the ``Backend`` contract allows), so those tokens are charged and those samples kept;
it raises only when nothing came back. ``faults`` counts what the server did wrong, by kind
(``_retry.FaultKind``, plus ``short_n`` for an answer with fewer choices than asked); the
service's metrics export it.

``server`` selects protocol extras: ``vllm`` enables prefix continuation
(``continue_final_message``); ``openai`` sends ``max_completion_tokens`` instead of
``max_tokens`` in chat requests; ``generic`` sends only the common fields; ``auto`` means
``openai`` for ``*.openai.com`` and otherwise ``generic`` until ``start()`` probes
``GET /version`` (vLLM's endpoint) and switches to ``vllm`` when it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, cast

import httpx
import openai
from asyncio_throttle import Throttler

from orchestrator.backends._parse import Batch, ParseOptions, parse_chat, parse_completion
from orchestrator.backends._retry import RetryPolicy, call_with_retries
from orchestrator.backends.base import (
    Backend,
    Capabilities,
    Generation,
    GenerationRequest,
    Pricing,
)
from orchestrator.errors import BackendError, BackendProtocolError, CapabilityError, ConfigError

log = logging.getLogger(__name__)

ServerKind = Literal["auto", "vllm", "openai", "generic"]
_CONTINUE_FINAL = {"continue_final_message": True, "add_generation_prompt": False}


class OpenAICompatBackend(Backend):
    """Completions from an OpenAI-compatible server.

    Args:
        name: the backend's configured name (``Candidate.backend``, error messages).
        model: the model name sent with every request.
        base_url: the API root including the version, e.g. ``http://localhost:8000/v1``.
        api_key: the bearer token; None sends ``"EMPTY"`` (what vLLM expects without auth).
        pricing: USD per million tokens (a ``Pricing`` or its fields as a mapping).
        max_concurrency: requests in flight at once, over all callers of this backend.
        requests_per_second: request starts per second (evenly spaced); None: unlimited.
        timeout: seconds one attempt may take, end to end.
        max_retries: retries after the first attempt on retryable failures.
        backoff_base: first backoff ceiling in seconds (doubles per retry, full jitter).
        backoff_max: largest backoff ceiling in seconds.
        retry_after_max: longest ``Retry-After`` wait honoured, in seconds.
        server: which protocol extras to use (see the module docstring).
        capabilities: overrides the defaults (logprobs, top_logprobs=20, native_n, and prefix
            continuation on vLLM only); a ``Capabilities`` or its fields as a mapping.
        http_client: the HTTP client to send through (tests); closed by ``aclose()``.

    Raises:
        ConfigError: a numeric setting is out of range.
    """

    kind: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        name: str,
        model: str,
        base_url: str,
        api_key: str | None = None,
        pricing: Pricing | Mapping[str, float] | None = None,
        max_concurrency: int = 16,
        requests_per_second: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        server: ServerKind = "auto",
        capabilities: Capabilities | Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        _check_settings(name, max_concurrency, requests_per_second, timeout, max_retries)
        if server == "auto" and (httpx.URL(base_url).host or "").endswith("openai.com"):
            server = "openai"
        self.server: ServerKind = server
        self._capabilities_given = capabilities is not None
        super().__init__(
            name,
            model,
            _as_capabilities(capabilities) if capabilities is not None else self._defaults(),
            Pricing.model_validate(pricing) if isinstance(pricing, Mapping) else pricing,
        )
        self.base_url = base_url
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries, backoff_base, backoff_max, retry_after_max)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._throttler = _throttler(requests_per_second)
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "EMPTY",
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            http_client=cast(Any, http_client),
        )
        self._closed = False
        self.faults: Counter[str] = Counter()

    def _fault(self, kind: str) -> None:
        self.faults[kind] += 1

    async def generate(self, request: GenerationRequest) -> Generation:
        """Sample ``request.n`` completions (see ``Backend.generate``).

        Raises:
            CapabilityError: the request needs logprobs, top_logprobs or prefix continuation
                beyond ``capabilities``.
            BackendRequestError: the server rejected the request (4xx other than 429).
            BackendTimeout | BackendUnavailable | BackendProtocolError: after all retries, when
                no request of the call succeeded; also BackendProtocolError when the server
                returns no choices at all.
        """
        self._check_capabilities(request)
        if self.capabilities.native_n:
            batches = await self._collect(request)
        else:
            batches = await self._fan_out(request)
        return Generation(
            candidates=[c for b in batches for c in b.candidates][: request.n],
            prompt_tokens=sum(b.prompt_tokens for b in batches),
            completion_tokens=sum(b.completion_tokens for b in batches),
            calls=len(batches),
        )

    async def start(self) -> None:
        """Nothing to load: the probe (below) is all a start needs. Idempotent."""
        await self.probe()

    async def probe(self) -> None:
        """Resolve ``server="auto"`` by probing vLLM's ``GET /version``. Idempotent."""
        if self.server != "auto":
            return
        root = self.base_url.rstrip("/").removesuffix("/v1")
        try:
            answer = await self._client.get(
                f"{root}/version", cast_to=object, options={"timeout": min(self.timeout, 10.0)}
            )
        except openai.OpenAIError as exc:
            log.info("%s: no vLLM /version at %s (%s); using generic server", self.name, root, exc)
            answer = None
        self.server = "vllm" if isinstance(answer, dict) and "version" in answer else "generic"
        if not self._capabilities_given:
            self.capabilities = self._defaults()

    async def aclose(self) -> None:
        """Close the HTTP client (also one passed as ``http_client``). Idempotent."""
        if not self._closed:
            self._closed = True
            await self._client.close()

    # -- one generate call ---------------------------------------------------------------------

    async def _collect(self, request: GenerationRequest) -> list[Batch]:
        """One request with ``n``, then top-ups for the choices the server left out.

        A failed or empty top-up ends the call with the batches already received.
        """
        batches: list[Batch] = []
        got = 0
        while got < request.n:
            try:
                batch = await self._request(request, n=request.n - got, offset=got)
                if len(batch.candidates) < request.n - got:
                    self._fault("short_n")
                if not batch.candidates:
                    raise BackendProtocolError(
                        f"{self._context(request)}: server returned no choices for n="
                        f"{request.n - got} ({got} of {request.n} collected)",
                        backend=self.name,
                    )
            except BackendError as exc:
                if not batches:
                    raise
                log.warning(
                    "%s: top-up failed; returning %d of %d: %s", self.name, got, request.n, exc
                )
                break
            batches.append(batch)
            got += len(batch.candidates)
        return batches

    async def _fan_out(self, request: GenerationRequest) -> list[Batch]:
        """``n`` concurrent requests of ``n=1``; the ones that succeed are returned.

        Raises the first backend failure when none succeeded.
        """
        results = await asyncio.gather(
            *(self._request(request, n=1, offset=i) for i in range(request.n)),
            return_exceptions=True,
        )
        batches = [r for r in results if isinstance(r, Batch) and r.candidates]
        errors = [r for r in results if isinstance(r, BaseException)]
        unexpected = [e for e in errors if not isinstance(e, BackendError)]
        if unexpected:
            raise unexpected[0]  # a bug or a cancellation, not a backend failure
        if not batches:
            if errors:
                raise errors[0]  # the first backend failure, with its own cause chain
            raise BackendProtocolError(
                f"{self._context(request)}: server returned no choices for n=1", backend=self.name
            )
        if len(batches) < request.n:
            log.warning(
                "%s: %d of %d requests failed; returning the rest: %s",
                self.name,
                request.n - len(batches),
                request.n,
                errors[0] if errors else "empty",
            )
        return batches

    async def _request(self, request: GenerationRequest, *, n: int, offset: int) -> Batch:
        """One HTTP request for ``n`` samples, retried per the policy, parsed."""
        options = ParseOptions(self.name, self.model, request.logprobs, request.top_logprobs)
        kwargs = self._kwargs(request, n=n, offset=offset)

        async def attempt() -> Batch:
            async with self._semaphore:
                if self._throttler is not None:
                    await self._throttler.acquire()
                async with asyncio.timeout(self.timeout):
                    if request.messages is not None:
                        chat = await self._client.chat.completions.create(**kwargs)
                        return parse_chat(chat, options)
                    completion = await self._client.completions.create(**kwargs)
                    return parse_completion(completion, options)

        return await call_with_retries(
            attempt,
            self.retry_policy,
            backend=self.name,
            context=self._context(request),
            timeout=self.timeout,
            on_fault=self._fault,
        )

    def _kwargs(self, request: GenerationRequest, *, n: int, offset: int) -> dict[str, Any]:
        """The create() arguments for one request of ``n`` samples starting at ``offset``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": False,
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.seed is not None:
            kwargs["seed"] = request.seed + offset
        if request.messages is None:
            kwargs["prompt"] = request.prompt
            kwargs["max_tokens"] = request.max_tokens
            if request.logprobs:
                kwargs["logprobs"] = request.top_logprobs
            return kwargs
        kwargs["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        # OpenAI deprecated `max_tokens` for chat (o-series models reject it); others want it.
        kwargs["max_completion_tokens" if self.server == "openai" else "max_tokens"] = (
            request.max_tokens
        )
        if request.logprobs:
            kwargs["logprobs"] = True
            if request.top_logprobs:
                kwargs["top_logprobs"] = request.top_logprobs
        if request.continue_final:
            kwargs["extra_body"] = dict(_CONTINUE_FINAL)
        return kwargs

    def _check_capabilities(self, request: GenerationRequest) -> None:
        missing = self.capabilities.missing(request.required_capabilities())
        if missing:
            hint = (
                " (prefix continuation needs a vLLM server: set `server: vllm`)"
                if "prefix_continuation" in missing
                else ""
            )
            raise CapabilityError(
                f"backend {self.name!r} ({self.server} server at {self.base_url}) lacks "
                f"{', '.join(missing)}{hint}"
            )

    def _context(self, request: GenerationRequest) -> str:
        endpoint = "chat/completions" if request.messages is not None else "completions"
        return f"POST {self.base_url.rstrip('/')}/{endpoint} (model {self.model!r})"

    def _defaults(self) -> Capabilities:
        return Capabilities(
            logprobs=True,
            top_logprobs=20,
            native_n=True,
            prefix_continuation=self.server == "vllm",
        )


def _as_capabilities(value: Capabilities | Mapping[str, Any]) -> Capabilities:
    return value if isinstance(value, Capabilities) else Capabilities.model_validate(dict(value))


def _throttler(requests_per_second: float | None) -> Throttler | None:
    """One request start per ``1/rps`` seconds (no bursts), or None for no limit."""
    if requests_per_second is None:
        return None
    period = 1.0 / requests_per_second
    return Throttler(rate_limit=1, period=period, retry_interval=min(0.01, period / 4))


def _check_settings(
    name: str, max_concurrency: int, rps: float | None, timeout: float, max_retries: int
) -> None:
    """Raise ConfigError naming the field, the value and the allowed range."""
    checks = [
        ("max_concurrency", max_concurrency, max_concurrency >= 1, "an integer >= 1"),
        ("requests_per_second", rps, rps is None or rps > 0, "a number > 0, or null"),
        ("timeout", timeout, timeout > 0, "a number of seconds > 0"),
        ("max_retries", max_retries, max_retries >= 0, "an integer >= 0"),
    ]
    for field, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"backend {name!r}: `{field}` must be {allowed}, got {value!r}")
