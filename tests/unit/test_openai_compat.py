"""OpenAICompatBackend against a real HTTP server (FakeOpenAIServer) with injected faults."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import openai
import pytest

from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.backends.openai_compat import OpenAICompatBackend
from orchestrator.errors import (
    BackendProtocolError,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
    CapabilityError,
    ConfigError,
)
from orchestrator.retry import RetryPolicy
from orchestrator.retry import retry_after_from_headers as parse_retry_after
from orchestrator.testing.fake_openai_server import FakeOpenAIServer, Fault
from orchestrator.types import Message

CHAT = [Message(role="user", content="What is two plus two?")]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


@asynccontextmanager
async def backend_for(
    fake: FakeOpenAIServer, /, **kwargs: Any
) -> AsyncIterator[OpenAICompatBackend]:
    settings: dict[str, Any] = {
        "name": "fake",
        "model": "m",
        "base_url": fake.base_url,
        "backoff_base": 0.01,
        "backoff_max": 0.02,
        "max_retries": 2,
        "timeout": 5.0,
    }
    backend = OpenAICompatBackend(**(settings | kwargs))
    try:
        yield backend
    finally:
        await backend.aclose()


def chat(**kwargs: Any) -> GenerationRequest:
    return GenerationRequest(messages=CHAT, **kwargs)


# -- happy paths --------------------------------------------------------------------------------


async def test_chat_parses_choices_logprobs_and_usage(server: FakeOpenAIServer) -> None:
    async with backend_for(server) as backend:
        gen = await backend.generate(chat(n=2, logprobs=True, top_logprobs=3, max_tokens=64))
    assert [c.text for c in gen.candidates] == ["The answer is 0.", "The answer is 1."]
    first = gen.candidates[0]
    assert (first.tokens, first.finish_reason, first.model, first.backend) == (
        5,
        "stop",
        "fake-model",
        "fake",
    )
    assert first.logprobs is not None and [t.token for t in first.logprobs][:2] == [
        "The",
        " answer",
    ]
    assert first.logprobs[0].logprob == pytest.approx(-0.1)
    assert first.logprobs[0].top is not None and len(first.logprobs[0].top) == 3
    assert (gen.prompt_tokens, gen.completion_tokens, gen.calls) == (5, 10, 1)
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/chat/completions"
    assert (body["n"], body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (
        2,
        True,
        3,
        64,
    )
    assert "seed" not in body and "continue_final_message" not in body


async def test_completion_parses_legacy_logprobs(server: FakeOpenAIServer) -> None:
    async with backend_for(server) as backend:
        request = GenerationRequest(
            prompt="2 + 2 =", n=2, logprobs=True, top_logprobs=2, max_tokens=3, seed=7, stop=["\n"]
        )
        gen = await backend.generate(request)
    assert [c.text for c in gen.candidates] == ["The answer is", "The answer is"]
    cand = gen.candidates[1]
    assert (cand.tokens, cand.finish_reason) == (3, "length")
    assert cand.logprobs is not None and [t.token for t in cand.logprobs] == [
        "The",
        " answer",
        " is",
    ]
    assert cand.logprobs[2].logprob == pytest.approx(-0.31)
    assert cand.logprobs[2].top == {" is": pytest.approx(-0.31), "alt1": pytest.approx(-1.31)}
    assert (gen.prompt_tokens, gen.completion_tokens) == (4, 6)
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/completions"
    assert (body["logprobs"], body["seed"], body["stop"], body["prompt"]) == (
        2,
        7,
        ["\n"],
        "2 + 2 =",
    )


async def test_without_logprobs_tokens_come_from_usage(server: FakeOpenAIServer) -> None:
    async with backend_for(server) as backend:
        gen = await backend.generate(chat(n=3))
    assert all(c.logprobs is None and c.tokens == 5 for c in gen.candidates)
    assert gen.completion_tokens == 15
    assert "logprobs" not in server.requests[0].body


# -- n ------------------------------------------------------------------------------------------


async def test_short_n_is_topped_up_with_shifted_seeds(server: FakeOpenAIServer) -> None:
    server.script(Fault.short_n(2), Fault.short_n(1))
    async with backend_for(server) as backend:
        gen = await backend.generate(chat(n=5, seed=10))
    assert len(gen.candidates) == 5 and gen.calls == 3
    assert [(r.body["n"], r.body["seed"]) for r in server.requests] == [(5, 10), (3, 12), (2, 13)]
    assert gen.prompt_tokens == 3 * 5 and gen.completion_tokens == 5 * 5


async def test_zero_choices_raises_protocol_error(server: FakeOpenAIServer) -> None:
    server.script(Fault.short_n(0))
    async with backend_for(server) as backend:
        with pytest.raises(BackendProtocolError, match="no choices"):
            await backend.generate(chat(n=3))
    assert server.count() == 1


async def test_empty_top_up_returns_what_came_back(server: FakeOpenAIServer) -> None:
    server.script(Fault.short_n(1), Fault.short_n(0))
    async with backend_for(server) as backend:
        gen = await backend.generate(chat(n=3))
    assert len(gen.candidates) == 1 and gen.calls == 1
    assert server.count() == 2


async def test_failed_top_up_keeps_and_charges_the_first_batch(server: FakeOpenAIServer) -> None:
    """The tokens of the request that succeeded are reported (so the budget is charged for
    them) and its samples kept, instead of both being lost with the top-up's error."""
    server.script(Fault.short_n(2), Fault.bad_request("top-up refused"))
    async with backend_for(server) as backend:
        gen = await backend.generate(chat(n=5))
    assert len(gen.candidates) == 2 and gen.calls == 1
    assert gen.prompt_tokens > 0 and gen.completion_tokens == sum(c.tokens for c in gen.candidates)


async def test_fan_out_returns_the_requests_that_succeeded(server: FakeOpenAIServer) -> None:
    server.script(Fault.bad_request("one refused"))
    caps = Capabilities(native_n=False)
    async with backend_for(server, capabilities=caps) as backend:
        gen = await backend.generate(chat(n=4))
    assert len(gen.candidates) == 3 and gen.calls == 3
    assert server.count() == 4


async def test_without_native_n_sends_n_requests_of_one(server: FakeOpenAIServer) -> None:
    caps = Capabilities(logprobs=True, top_logprobs=5, native_n=False)
    async with backend_for(server, capabilities=caps) as backend:
        gen = await backend.generate(chat(n=4, seed=0))
    assert len(gen.candidates) == 4 and gen.calls == 4
    assert sorted(r.body["seed"] for r in server.requests) == [0, 1, 2, 3]
    assert all(r.body["n"] == 1 for r in server.requests)


# -- retries ------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after(server: FakeOpenAIServer) -> None:
    server.script(Fault.rate_limited(retry_after="1"))
    async with backend_for(server) as backend:
        gen = await backend.generate(chat())
    assert len(gen.candidates) == 1 and gen.calls == 1
    first, second = server.requests
    assert second.received - first.received >= 0.95


async def test_retry_after_is_capped(server: FakeOpenAIServer) -> None:
    server.script(Fault.rate_limited(retry_after="30"))
    async with backend_for(server, retry_after_max=0.1) as backend:
        start = time.monotonic()
        await backend.generate(chat())
    assert time.monotonic() - start < 2 and server.count() == 2


async def test_500_is_retried_then_succeeds(server: FakeOpenAIServer) -> None:
    server.script(Fault.server_error(), Fault.server_error(502))
    async with backend_for(server) as backend:
        gen = await backend.generate(chat())
    assert len(gen.candidates) == 1 and server.count() == 3


async def test_5xx_after_retries_raises_unavailable(server: FakeOpenAIServer) -> None:
    server.script(*[Fault.server_error(503, "engine overloaded")] * 3)
    async with backend_for(server) as backend:
        with pytest.raises(BackendUnavailable) as info:
            await backend.generate(chat())
    message = str(info.value)
    assert "HTTP 503" in message and "engine overloaded" in message and "3 attempt" in message
    assert info.value.status == 503 and isinstance(info.value.__cause__, openai.APIStatusError)
    assert server.count() == 3


async def test_400_is_not_retried(server: FakeOpenAIServer) -> None:
    server.script(Fault.bad_request("`temperature` must be <= 2"))
    async with backend_for(server) as backend:
        with pytest.raises(BackendRequestError, match="`temperature` must be <= 2") as info:
            await backend.generate(chat())
    assert info.value.status == 400 and "not retried" in str(info.value)
    assert isinstance(info.value.__cause__, openai.BadRequestError)
    assert server.count() == 1


async def test_timeout_after_retries_raises_backend_timeout(server: FakeOpenAIServer) -> None:
    server.script(Fault.slow(5), Fault.slow(5))
    async with backend_for(server, timeout=0.3, max_retries=1) as backend:
        start = time.monotonic()
        with pytest.raises(BackendTimeout) as info:
            await backend.generate(chat())
    assert time.monotonic() - start < 2
    assert "no response within 0.3 s" in str(info.value) and "2 attempt" in str(info.value)
    assert server.count() == 2


async def test_truncated_json_is_retried(server: FakeOpenAIServer) -> None:
    server.script(Fault.truncated())
    async with backend_for(server) as backend:
        gen = await backend.generate(chat())
    assert len(gen.candidates) == 1 and server.count() == 2


async def test_truncated_json_after_retries_raises_protocol_error(
    server: FakeOpenAIServer,
) -> None:
    server.script(*[Fault.truncated()] * 3)
    async with backend_for(server) as backend:
        with pytest.raises(BackendProtocolError, match=r"unparseable response.*3 attempt"):
            await backend.generate(GenerationRequest(prompt="x"))
    assert server.count() == 3


async def test_connection_errors_through_injected_client() -> None:
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    backend = OpenAICompatBackend(
        name="x",
        model="m",
        base_url="http://backend.invalid/v1",
        max_retries=1,
        backoff_base=0.01,
        http_client=client,
    )
    with pytest.raises(BackendUnavailable, match=r"connection refused.*2 attempt"):
        await backend.generate(chat())
    await backend.aclose()
    assert len(seen) == 2 and seen[0].headers["authorization"] == "Bearer EMPTY"


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    when = datetime(2030, 1, 1, tzinfo=UTC)
    now = (when - timedelta(seconds=3)).timestamp()
    assert parse_retry_after({"retry-after": format_datetime(when, usegmt=True)}, now) == 3.0
    policy = RetryPolicy(backoff_base=0.5, backoff_max=1.0, retry_after_max=5.0)
    assert policy.delay(0, retry_after=30.0) == 5.0
    assert all(0.0 <= policy.delay(10) <= 1.0 for _ in range(50))


# -- limits -------------------------------------------------------------------------------------


async def test_concurrency_limit_is_honoured() -> None:
    with FakeOpenAIServer(latency=0.1) as server:
        async with backend_for(server, max_concurrency=3) as backend:
            await asyncio.gather(*(backend.generate(chat()) for _ in range(9)))
    assert server.count() == 9 and 1 < server.max_in_flight <= 3


async def test_requests_per_second_is_honoured(server: FakeOpenAIServer) -> None:
    async with backend_for(server, requests_per_second=20) as backend:
        await asyncio.gather(*(backend.generate(chat()) for _ in range(8)))
    times = sorted(r.received for r in server.requests)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The throttler spaces request starts 50 ms apart; arrival times at the server add
    # scheduling jitter on a loaded machine. Unthrottled, the 8 requests arrive within ~1 ms.
    assert min(gaps) >= 0.01 and times[-1] - times[0] >= 0.3


# -- prefix continuation, capabilities, cancellation, config ------------------------------------


async def test_continue_final_sends_vllm_extra_body(server: FakeOpenAIServer) -> None:
    messages = [*CHAT, Message(role="assistant", content="Let me think. 2 + 2")]
    async with backend_for(server, server="vllm") as backend:
        assert backend.capabilities.prefix_continuation
        await backend.generate(GenerationRequest(messages=messages, continue_final=True))
    body = server.requests[0].body
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "Let me think. 2 + 2"}


@pytest.mark.parametrize(
    ("request_kwargs", "missing"),
    [({"continue_final": True}, "prefix_continuation"), ({"logprobs": True}, "logprobs")],
)
async def test_missing_capability_is_refused_before_sending(
    server: FakeOpenAIServer, request_kwargs: dict[str, Any], missing: str
) -> None:
    messages = [*CHAT, Message(role="assistant", content="Partial")]
    caps = Capabilities(native_n=True)
    async with backend_for(server, server="generic", capabilities=caps) as backend:
        with pytest.raises(CapabilityError, match=missing):
            await backend.generate(GenerationRequest(messages=messages, **request_kwargs))
    assert server.count() == 0


async def test_cancellation_propagates_and_aborts_the_request(server: FakeOpenAIServer) -> None:
    server.script(Fault.slow(10))
    async with backend_for(server) as backend:
        task = asyncio.create_task(backend.generate(chat()))
        while server.count() == 0:
            await asyncio.sleep(0.01)
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - start < 1
        for _ in range(100):
            if server.disconnects:
                break
            await asyncio.sleep(0.02)
    assert server.disconnects == 1 and server.count() == 1


async def test_openai_server_sends_max_completion_tokens_in_chat(
    server: FakeOpenAIServer,
) -> None:
    async with backend_for(server, server="openai") as backend:
        await backend.generate(chat(max_tokens=9))
        await backend.generate(GenerationRequest(prompt="x", max_tokens=9))
    chat_body, completion_body = (r.body for r in server.requests)
    assert chat_body["max_completion_tokens"] == 9 and "max_tokens" not in chat_body
    assert completion_body["max_tokens"] == 9


async def test_fan_out_failure_raises_the_backend_error(server: FakeOpenAIServer) -> None:
    server.script(*[Fault.bad_request("no such model")] * 3)
    caps = Capabilities(native_n=False)
    async with backend_for(server, capabilities=caps) as backend:
        with pytest.raises(BackendRequestError, match="no such model") as info:
            await backend.generate(chat(n=3))
    assert isinstance(info.value.__cause__, openai.BadRequestError)


@pytest.mark.parametrize("vllm", [True, False])
async def test_auto_server_probes_vllm_version(vllm: bool) -> None:
    with FakeOpenAIServer(vllm=vllm) as server:
        async with backend_for(server) as backend:
            assert backend.server == "auto" and not backend.capabilities.prefix_continuation
            await backend.start()
            await backend.start()
    assert backend.server == ("vllm" if vllm else "generic")
    assert backend.capabilities.prefix_continuation is vllm


def test_openai_host_and_settings_validation() -> None:
    backend = OpenAICompatBackend(
        name="o",
        model="gpt",
        base_url="https://api.openai.com/v1",
        pricing={"prompt": 1.0, "completion": 2.0},
    )
    assert backend.server == "openai" and backend.pricing.completion == 2.0
    assert backend.kind == "openai" and not backend.capabilities.prefix_continuation
    with pytest.raises(ConfigError, match=r"max_concurrency.*got 0"):
        OpenAICompatBackend(name="o", model="m", base_url="http://x/v1", max_concurrency=0)
