"""A real HTTP server speaking vLLM's pooling API for reward models, with scriptable faults.

It answers ``POST /pooling`` the way ``vllm.entrypoints.openai.api_server`` 0.32 does for a
model served with ``--runner pooling --convert classify`` (one row of label scores per input)
or, with ``step_tag`` set, with ``--pooler-config '{"task": "token_classify",
"tok_pooling_type": "STEP", "step_tag_id": ...}'`` (one row per step tag in the input)::

    with FakeRewardServer(step_tag="<step>") as server:
        verifier = RewardModel(base_url=server.root_url, process=True, step_tag="<step>")
        ...

Requests carry ``input`` (a string or a list of strings: one output each) or ``messages`` (one
conversation). A score is ``scorer(text)`` (default: a stable hash of the text in [0, 1]); for a
step tag, the text up to and including that tag. An unknown ``model`` gets vLLM's 404. Faults
(``Fault`` from ``fake_openai_server``: status, slow, truncated) are scripted and consumed as in
``FakeOpenAIServer``, which this class extends (so ``requests``, ``count``, ``in_flight``,
``disconnects`` and the OpenAI routes work the same).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from orchestrator.testing.fake_openai_server import FakeOpenAIServer, Fault


def hash_score(text: str) -> float:
    """A stable pseudo-score in [0, 1] for ``text`` (CRC-32 based)."""
    return (zlib.crc32(text.encode()) % 10_007) / 10_006


class FakeRewardServer(FakeOpenAIServer):
    """vLLM's ``/pooling`` endpoint for reward models, as a context manager (start / stop).

    Args:
        model: the served model name; requests naming another model get a 404.
        latency: seconds every normal answer waits.
        step_tag: answer token-level rows, one per occurrence of this tag (a PRM); None: one
            sequence-level row per input (an outcome reward model).
        labels: labels per row: 1 (``[score]``) or 2 (``[1 - score, score]``).
        scorer: maps a text to its score; default ``hash_score``.
    """

    def __init__(
        self,
        *,
        model: str = "fake-rm",
        latency: float = 0.0,
        step_tag: str | None = None,
        labels: int = 1,
        scorer: Callable[[str], float] = hash_score,
    ) -> None:
        super().__init__(model=model, latency=latency, vllm=True)
        self.step_tag = step_tag
        self.labels = labels
        self.scorer = scorer

    def start(self) -> FakeRewardServer:
        """Start the server (see ``FakeOpenAIServer.start``)."""
        super().start()
        return self

    def __enter__(self) -> FakeRewardServer:
        return self.start()

    @property
    def root_url(self) -> str:
        """The server root (``http://127.0.0.1:PORT``), where vLLM serves ``/pooling``."""
        return self.base_url.removesuffix("/v1")

    def _app(self) -> FastAPI:
        app = super()._app()

        @app.post("/pooling")
        async def pooling(request: Request) -> Response:
            body = await request.json()
            fault = self._record(request.url.path, body)
            try:
                return await self._pool(request, body, fault)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return app

    async def _pool(self, request: Request, body: dict[str, Any], fault: Fault | None) -> Response:
        delay = self.latency + (fault.seconds if fault and fault.kind == "slow" else 0.0)
        if not await self._wait(request, delay):
            return Response(status_code=499)
        if fault is not None and fault.kind == "status":
            return _error(fault.message, "FakeError", fault.status, fault.headers)
        if fault is not None and fault.kind == "truncated":
            return Response(b'{"data": [{"index": 0, "da', 200, media_type="application/json")
        if body.get("model") not in (None, self.model):
            return _error(f"The model `{body['model']}` does not exist.", "NotFoundError", 404)
        if "messages" in body:
            texts = ["\n".join(f"{m['role']}: {m['content']}" for m in body["messages"])]
        else:
            raw = body.get("input")
            texts = [raw] if isinstance(raw, str) else list(raw or [])
        data = [
            {"index": i, "object": "pooling", "data": self._output(t)} for i, t in enumerate(texts)
        ]
        prompt_tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return JSONResponse(
            {
                "id": "pool-fake",
                "object": "list",
                "created": int(time.time()),
                "model": self.model,
                "data": data,
                "usage": {**usage, "completion_tokens": 0},
            }
        )

    def _output(self, text: str) -> list[float] | list[list[float]]:
        if self.step_tag is None:
            return self._row(text)
        parts = text.split(self.step_tag)[:-1]  # the text after the last tag has no score
        ends = [sum(len(p) + len(self.step_tag) for p in parts[: k + 1]) for k in range(len(parts))]
        return [self._row(text[:end]) for end in ends]

    def _row(self, text: str) -> list[float]:
        score = self.scorer(text)
        return [score] if self.labels == 1 else [1.0 - score, score]


def _error(
    message: str, kind: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    error = {"message": message, "type": kind, "param": None, "code": status}
    return JSONResponse({"error": error}, status_code=status, headers=headers)
