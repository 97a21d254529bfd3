"""A real HTTP server speaking the OpenAI completions protocol, with scriptable faults.

Tests point a real client (``openai.AsyncOpenAI`` inside ``OpenAICompatBackend``) at it, so the
whole transport (HTTP, JSON, headers, timeouts, retries) is exercised, never faked internals::

    with FakeOpenAIServer() as server:
        server.script(Fault.rate_limited(retry_after="1"), Fault.server_error())
        backend = OpenAICompatBackend(name="fake", model="m", base_url=server.base_url)
        ...
        assert len(server.requests) == 3

The server is a FastAPI app run by uvicorn in a background thread on a free ``127.0.0.1`` port.
``/v1/chat/completions`` and ``/v1/completions`` answer in the OpenAI response shape (with
logprobs when asked); ``/version`` answers like vLLM when ``vllm=True``. Each request consumes
the next scripted ``Fault`` (FIFO, in arrival order); with the script empty it answers normally,
or, with ``fault_rate`` > 0, injects a random fault of ``fault_kinds`` into that share of the
requests (``random_fault``; counted by kind in ``injected``): 429 with ``Retry-After``, 500,
503, a timeout (an answer slower than the client waits), a connection dropped mid-response,
truncated JSON, and fewer choices than ``n``.

As a separate process (load tests, trying ``ttc serve`` by hand), it serves until SIGTERM or
SIGINT and prints its ``base_url`` as the first line of stdout::

    python -m orchestrator.testing.fake_openai_server --latency 0.05 --fault-rate 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from orchestrator.testing.openai_faults import FAULT_KINDS, Fault, random_fault

__all__ = ["FAULT_KINDS", "FakeOpenAIServer", "Fault", "RecordedRequest", "random_fault"]


@dataclass
class RecordedRequest:
    """One request the server received.

    Attributes:
        path: the URL path, e.g. ``/v1/chat/completions``.
        body: the decoded JSON body (``{}`` for GET).
        received: ``time.monotonic()`` when the request arrived.
        fault: the fault applied to it, or None.
    """

    path: str
    body: dict[str, Any]
    received: float
    fault: Fault | None = None


class FakeOpenAIServer:
    """An OpenAI-compatible HTTP server for tests; a context manager (start / stop).

    Args:
        model: the ``model`` reported in responses.
        latency: seconds every normal answer waits (lets tests overlap requests).
        vllm: serve ``GET /version`` like a vLLM server does.
        record: keep every request in ``requests``; False (long-running load servers) keeps
            memory flat and leaves ``requests`` empty.
        fault_rate: the share of unscripted requests that get a random fault (0: none).
        fault_kinds: the kinds drawn (default: all of ``FAULT_KINDS``).
        timeout_seconds: how long a ``timeout`` fault keeps the client waiting.
        retry_after: the ``Retry-After`` of a ``rate_limited`` fault.
        seed: seeds the fault draws.

    Thread safety: the server runs in its own thread; ``requests``, ``in_flight``,
    ``max_in_flight`` and ``disconnects`` may be read from the test thread at any time.
    """

    def __init__(
        self,
        *,
        model: str = "fake-model",
        latency: float = 0.0,
        vllm: bool = False,
        record: bool = True,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        timeout_seconds: float = 5.0,
        retry_after: str = "1",
        seed: int | None = None,
    ):
        self.model = model
        self.latency = latency
        self.vllm = vllm
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        self._faults: deque[Fault] = deque()
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.timeout_seconds = timeout_seconds
        self.retry_after = retry_after
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)
        for kind in self.fault_kinds:
            random_fault(kind, self._rng, timeout_seconds=timeout_seconds)  # fail fast
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` of the running server (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self._port}/v1"

    def script(self, *faults: Fault) -> None:
        """Queue faults; each following request consumes one, in arrival order."""
        with self._lock:
            self._faults.extend(faults)

    def count(self, path: str | None = None) -> int:
        """Number of requests received, optionally only those to ``path``."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def start(self) -> FakeOpenAIServer:
        """Bind a free port, start uvicorn in a thread and wait until it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and join its thread. Idempotent."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (runs in the server thread) ------------------------------------------

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._handle(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._handle(request, chat=False)

        @app.get("/version")
        async def version() -> Response:
            if not self.vllm:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return JSONResponse({"version": "0.0.0-fake"})

        return app

    def _record(self, path: str, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            fault = self._faults.popleft() if self._faults else self._draw()
            if self.record:
                self.requests.append(RecordedRequest(path, body, time.monotonic(), fault))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return fault

    def _draw(self) -> Fault | None:
        """A random fault for ``fault_rate`` of the requests (called under the lock)."""
        if self.fault_rate <= 0 or self._rng.random() >= self.fault_rate:
            return None
        kind = self._rng.choice(self.fault_kinds)
        self.injected[kind] += 1
        return random_fault(
            kind, self._rng, timeout_seconds=self.timeout_seconds, retry_after=self.retry_after
        )

    async def _handle(self, request: Request, *, chat: bool) -> Response:
        body = await request.json()
        fault = self._record(request.url.path, body)
        try:
            return await self._respond(request, body, fault, chat=chat)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _respond(
        self, request: Request, body: dict[str, Any], fault: Fault | None, *, chat: bool
    ) -> Response:
        delay = self.latency + (fault.seconds if fault and fault.kind == "slow" else 0.0)
        if not await self._wait(request, delay):
            return Response(status_code=499)
        if fault is not None and fault.kind == "status":
            error = {"message": fault.message, "type": "FakeError", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=fault.status, headers=fault.headers)
        if fault is not None and fault.kind == "reset":
            return _DroppedResponse()
        if fault is not None and fault.kind == "truncated":
            return Response(
                b'{"id": "cmpl-1", "choices": [{"index": 0, "te', 200, media_type="application/json"
            )
        n = int(body.get("n") or 1)
        if fault is not None and fault.kind == "short_n":
            n = min(n, fault.choices)
        build = chat_response if chat else completion_response
        return JSONResponse(build(body, n=n, model=self.model))

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep ``seconds`` in small steps; False (and counted) if the client went away."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.02))
            if seconds > 0.05 and await request.is_disconnected():
                with self._lock:
                    self.disconnects += 1
                return False
        return True


class InjectedReset(ConnectionResetError):
    """Raised by a ``reset`` fault after its answer began: uvicorn drops the connection."""


class _QuietResets(logging.Filter):
    """Keeps uvicorn from logging a traceback for each injected reset."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedReset)


logging.getLogger("uvicorn.error").addFilter(_QuietResets())


class _DroppedResponse(Response):
    """Sends the start of a 200 JSON answer, then fails: uvicorn drops the connection."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "x", ', "more_body": True})
        raise InjectedReset("fake server: connection reset mid-response")


# -- response payloads -------------------------------------------------------------------------


def sample_tokens(index: int, max_tokens: int) -> tuple[list[str], str]:
    """The tokens of choice ``index`` (``"The answer is {index}."``) and its finish reason."""
    tokens = ["The", " answer", " is", f" {index}", "."]
    if len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def _logprob(index: int, position: int) -> float:
    return round(-0.1 * (position + 1) - 0.01 * index, 6)


def _top(token: str, logprob: float, k: int) -> list[tuple[str, float]]:
    return [(token, logprob)] + [(f"alt{m}", logprob - m) for m in range(1, k)]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def chat_response(body: dict[str, Any], *, n: int, model: str) -> dict[str, Any]:
    """A ``chat.completion`` object answering ``body`` with ``n`` choices."""
    k = int(body.get("top_logprobs") or 0)
    choices, completion_tokens = [], 0
    for i in range(n):
        tokens, finish = sample_tokens(i, int(body.get("max_tokens") or 16))
        completion_tokens += len(tokens)
        logprobs = None
        if body.get("logprobs"):
            content = []
            for j, tok in enumerate(tokens):
                lp = _logprob(i, j)
                top = [{"token": t, "logprob": v, "bytes": None} for t, v in _top(tok, lp, k)]
                content.append({"token": tok, "logprob": lp, "bytes": None, "top_logprobs": top})
            logprobs = {"content": content}
        message = {"role": "assistant", "content": "".join(tokens)}
        choices.append(
            {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
        )
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def completion_response(body: dict[str, Any], *, n: int, model: str) -> dict[str, Any]:
    """A legacy ``text_completion`` object answering ``body`` with ``n`` choices."""
    k = body.get("logprobs")
    choices, completion_tokens = [], 0
    for i in range(n):
        tokens, finish = sample_tokens(i, int(body.get("max_tokens") or 16))
        completion_tokens += len(tokens)
        logprobs = None
        if k is not None:
            lps = [_logprob(i, j) for j in range(len(tokens))]
            logprobs = {
                "tokens": tokens,
                "token_logprobs": lps,
                "top_logprobs": [
                    dict(_top(t, v, int(k))) for t, v in zip(tokens, lps, strict=True)
                ],
                "text_offset": [sum(len(t) for t in tokens[:j]) for j in range(len(tokens))],
            }
        choices.append(
            {"index": i, "text": "".join(tokens), "logprobs": logprobs, "finish_reason": finish}
        )
    prompt_tokens = len(str(body.get("prompt", "")).split())
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }


# -- as a separate process ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Serve on a free loopback port until SIGTERM/SIGINT; print ``base_url`` first."""
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible server.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every answer waits")
    parser.add_argument("--model", default="fake-model", help="model reported in responses")
    parser.add_argument("--vllm", action="store_true", help="serve GET /version like vLLM")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of faulty answers")
    parser.add_argument(
        "--faults", default=",".join(FAULT_KINDS), help="comma-separated fault kinds to draw"
    )
    parser.add_argument("--timeout-seconds", type=float, default=5.0, help="a timeout's wait")
    parser.add_argument("--seed", type=int, default=None, help="seeds the fault draws")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = FakeOpenAIServer(
        model=args.model,
        latency=args.latency,
        vllm=args.vllm,
        record=False,
        fault_rate=args.fault_rate,
        fault_kinds=[k for k in args.faults.split(",") if k],
        timeout_seconds=args.timeout_seconds,
        seed=args.seed,
    )
    with server:
        print(server.base_url, flush=True)
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    main()
